//! Input layout helpers shared by the structured targets.
//!
//! A structured input is a few control bytes read with [`Reader`] (missing
//! bytes read as 0, so every input is valid), then a payload. Payloads with
//! two parts (request, response) are split at the first [`SEP`].

/// Separates the request body from the response body in the exchange
/// targets' payload.
pub const SEP: &[u8] = b"\n--egret-fuzz--\n";

/// Reads control bytes from the front of the input.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    /// The next byte, 0 once the input is exhausted.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// How a payload is cut into the chunks the code under test receives: one
/// control byte `n` (mod 17) then `n` length bytes, used in a cycle. A
/// length of 0 means "the rest", 255 an empty chunk; no lengths: one chunk.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    lens: &'a [u8],
}

impl<'a> Plan<'a> {
    pub fn read(r: &mut Reader<'a>) -> Plan<'a> {
        let n = usize::from(r.byte() % 17);
        Plan { lens: r.take(n) }
    }

    /// One chunk: the whole payload.
    pub fn whole() -> Plan<'static> {
        Plan { lens: &[] }
    }

    pub fn split<'b>(&self, data: &'b [u8]) -> Vec<&'b [u8]> {
        if self.lens.is_empty() {
            return vec![data];
        }
        let mut out = Vec::new();
        let mut rest = data;
        // Empty chunks cannot stall the loop forever.
        let max_chunks = 2 * data.len() + 16;
        let mut i = 0;
        while !rest.is_empty() {
            if out.len() >= max_chunks {
                out.push(rest);
                break;
            }
            let n = match self.lens[i % self.lens.len()] {
                0 => rest.len(),
                255 => 0,
                n => usize::from(n).min(rest.len()),
            };
            i += 1;
            let (a, b) = rest.split_at(n);
            out.push(a);
            rest = b;
        }
        out
    }
}

/// `(before, after)` the first [`SEP`]; without one, `(&[], data)`.
pub fn two_parts(data: &[u8]) -> (&[u8], &[u8]) {
    match find(data, SEP) {
        Some(i) => (&data[..i], &data[i + SEP.len()..]),
        None => (&[], data),
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_the_payload() {
        let data: Vec<u8> = (0..100).collect();
        for lens in [&[][..], &[1], &[0], &[255, 3], &[255], &[7, 0, 2]] {
            let chunks = Plan { lens }.split(&data);
            assert_eq!(chunks.concat(), data, "{lens:?}");
        }
    }
}
