pub mod record; pub mod semconv;
pub mod tls;
