pub mod record; pub mod semconv;
