//! Bencode, as rtpengine's ng protocol uses it.
//!
//! Written here rather than taken from a crate because the ng dialect differs from strict
//! bencode in ways the common crates reject or lose: dictionaries arrive with unsorted keys
//! (Kamailio) and replies must keep insertion order (rtpengine puts `result` last); strings
//! are bytes, not UTF-8; integers may also come as decimal strings. The decoder is bounded
//! (nesting depth, element count) so hostile input costs little, never panics, and is fuzzed
//! (`fuzz/fuzz_targets/bencode.rs`).

use std::fmt;

/// A bencode value. Dictionaries keep their keys in wire order; lookups take the first match.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(Dict),
}

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Dict(pub Vec<(Vec<u8>, Value)>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    UnexpectedEnd,
    InvalidByte(usize),
    BadInteger(usize),
    BadLength(usize),
    TooDeep,
    TooManyElements,
    /// Bytes after the top-level value.
    Trailing(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnexpectedEnd => f.write_str("unexpected end of input"),
            DecodeError::InvalidByte(at) => write!(f, "invalid byte at offset {at}"),
            DecodeError::BadInteger(at) => write!(f, "malformed integer at offset {at}"),
            DecodeError::BadLength(at) => write!(f, "malformed string length at offset {at}"),
            DecodeError::TooDeep => f.write_str("nested too deeply"),
            DecodeError::TooManyElements => f.write_str("too many elements"),
            DecodeError::Trailing(at) => write!(f, "trailing bytes at offset {at}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Nesting allowed in a request; ng messages nest three or four levels.
const MAX_DEPTH: usize = 32;
/// Values in one message; a 64 KiB datagram cannot hold more than this many anyway.
const MAX_ELEMENTS: usize = 65_536;

struct Decoder<'a> {
    b: &'a [u8],
    pos: usize,
    elements: usize,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.b
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::UnexpectedEnd)
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        self.elements += 1;
        if self.elements > MAX_ELEMENTS {
            return Err(DecodeError::TooManyElements);
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let start = self.pos;
                let end = self.b[start..]
                    .iter()
                    .position(|&c| c == b'e')
                    .ok_or(DecodeError::UnexpectedEnd)?
                    + start;
                let n = parse_int(&self.b[start..end]).ok_or(DecodeError::BadInteger(start))?;
                self.pos = end + 1;
                Ok(Value::Int(n))
            }
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    let key = self.bytes()?;
                    let v = self.value(depth + 1)?;
                    items.push((key, v));
                }
                self.pos += 1;
                Ok(Value::Dict(Dict(items)))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            _ => Err(DecodeError::InvalidByte(self.pos)),
        }
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let start = self.pos;
        if !self.peek()?.is_ascii_digit() {
            return Err(DecodeError::InvalidByte(start));
        }
        let colon = self.b[start..]
            .iter()
            .position(|&c| c == b':')
            .ok_or(DecodeError::UnexpectedEnd)?
            + start;
        let digits = &self.b[start..colon];
        if digits.is_empty()
            || digits.len() > 10
            || !digits.iter().all(u8::is_ascii_digit)
            || (digits.len() > 1 && digits[0] == b'0')
        {
            return Err(DecodeError::BadLength(start));
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(DecodeError::BadLength(start))?;
        let from = colon + 1;
        let to = from.checked_add(len).ok_or(DecodeError::BadLength(start))?;
        if to > self.b.len() {
            return Err(DecodeError::UnexpectedEnd);
        }
        self.pos = to;
        Ok(self.b[from..to].to_vec())
    }
}

/// Strict bencode integer: optional minus, no leading zeros, no "-0".
fn parse_int(d: &[u8]) -> Option<i64> {
    let (neg, digits) = match d.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, d),
    };
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
        || (neg && digits == b"0")
    {
        return None;
    }
    let s = std::str::from_utf8(d).ok()?;
    s.parse().ok()
}

/// Decodes exactly one value that spans all of `b`.
///
/// # Errors
///
/// [`DecodeError`] if `b` is not exactly one well-formed value within the limits.
pub fn decode(b: &[u8]) -> Result<Value, DecodeError> {
    let mut d = Decoder {
        b,
        pos: 0,
        elements: 0,
    };
    let v = d.value(0)?;
    if d.pos != b.len() {
        return Err(DecodeError::Trailing(d.pos));
    }
    Ok(v)
}

/// Decodes a dictionary at the start of `b`; bytes after it are ignored, as rtpengine does.
///
/// # Errors
///
/// [`DecodeError`] if `b` does not start with a well-formed dictionary within the limits.
pub fn decode_dict_prefix(b: &[u8]) -> Result<Dict, DecodeError> {
    let mut d = Decoder {
        b,
        pos: 0,
        elements: 0,
    };
    if b.first() != Some(&b'd') {
        return Err(DecodeError::InvalidByte(0));
    }
    match d.value(0)? {
        Value::Dict(dict) => Ok(dict),
        _ => Err(DecodeError::InvalidByte(0)),
    }
}

impl Value {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(n) => {
                out.push(b'i');
                out.extend_from_slice(n.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => encode_bytes(b, out),
            Value::List(items) => {
                out.push(b'l');
                for i in items {
                    i.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => d.encode_into(out),
        }
    }

    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    #[must_use]
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// An integer, or a string holding only a decimal integer (ng accepts both).
    #[must_use]
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    #[must_use]
    pub fn str(s: &str) -> Self {
        Value::Bytes(s.as_bytes().to_vec())
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

impl Dict {
    #[must_use]
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// First value under `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// First value under any of `keys` (rtpengine's spelling variants).
    #[must_use]
    pub fn get_any(&self, keys: &[&str]) -> Option<&Value> {
        keys.iter().find_map(|k| self.get(k))
    }

    #[must_use]
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// Appends (keeps insertion order; does not replace).
    pub fn push(&mut self, key: &str, v: Value) -> &mut Self {
        self.0.push((key.as_bytes().to_vec(), v));
        self
    }

    /// Replaces the first value under `key`, or appends.
    pub fn set(&mut self, key: &str, v: Value) -> &mut Self {
        match self.0.iter_mut().find(|(k, _)| k == key.as_bytes()) {
            Some((_, old)) => *old = v,
            None => self.0.push((key.as_bytes().to_vec(), v)),
        }
        self
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|(k, _)| k.as_slice())
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(b'd');
        for (k, v) in &self.0 {
            encode_bytes(k, out);
            v.encode_into(out);
        }
        out.push(b'e');
    }

    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => write!(f, "{s:?}"),
                Err(_) => write!(f, "<{} bytes>", b.len()),
            },
            Value::List(l) => f.debug_list().entries(l).finish(),
            Value::Dict(d) => fmt::Debug::fmt(d, f),
        }
    }
}

impl fmt::Debug for Dict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (String::from_utf8_lossy(k), v)))
            .finish()
    }
}

/// Builds a dictionary: `dict! { "result" => "ok", "n" => 3 }`.
#[macro_export]
macro_rules! ng_dict {
    ($($k:expr => $v:expr),* $(,)?) => {{
        #[allow(unused_mut, reason = "an empty dict! has nothing to push")]
        let mut d = $crate::ng::bencode::Dict::new();
        $( d.push($k, $crate::ng::bencode::Value::from($v)); )*
        d
    }};
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::str(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Bytes(s.into_bytes())
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u16> for Value {
    fn from(n: u16) -> Self {
        Value::Int(i64::from(n))
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<Dict> for Value {
    fn from(d: Dict) -> Self {
        Value::Dict(d)
    }
}

impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Self {
        Value::List(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_kamailio_style_unsorted_dictionaries() {
        let msg = b"d8:supportsl10:load limite3:sdp3:v=07:call-id2:c17:command5:offere";
        let Value::Dict(d) = decode(msg).unwrap() else {
            panic!()
        };
        let keys: Vec<_> = d
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(keys, ["supports", "sdp", "call-id", "command"]);
        assert_eq!(d.get_str("command"), Some("offer"));
        assert_eq!(
            Value::Dict(d).encode(),
            msg,
            "re-encodes byte for byte, order kept"
        );
    }

    #[test]
    fn integers_and_numeric_strings() {
        assert_eq!(decode(b"i-42e").unwrap(), Value::Int(-42));
        assert_eq!(decode(b"2:30").unwrap().as_int(), Some(30));
        for bad in [&b"i-0e"[..], b"i03e", b"ie", b"i1x2e", b"i-e"] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rejects_malformed_input_with_a_reason() {
        assert_eq!(decode(b""), Err(DecodeError::UnexpectedEnd));
        assert_eq!(decode(b"x"), Err(DecodeError::InvalidByte(0)));
        assert_eq!(decode(b"5:abc"), Err(DecodeError::UnexpectedEnd));
        assert_eq!(decode(b"01:a"), Err(DecodeError::BadLength(0)));
        assert_eq!(decode(b"99999999999:a"), Err(DecodeError::BadLength(0)));
        assert_eq!(decode(b"le"), Ok(Value::List(vec![])));
        assert_eq!(decode(b"lee"), Err(DecodeError::Trailing(2)));
        assert_eq!(
            decode(b"di1ei2ee"),
            Err(DecodeError::InvalidByte(1)),
            "integer keys"
        );
        let deep = "l".repeat(100) + &"e".repeat(100);
        assert_eq!(decode(deep.as_bytes()), Err(DecodeError::TooDeep));
    }

    #[test]
    fn prefix_decoding_ignores_trailing_bytes_like_rtpengine() {
        let d = decode_dict_prefix(b"d7:command4:pingetrailing").unwrap();
        assert_eq!(d.get_str("command"), Some("ping"));
        assert!(decode_dict_prefix(b"l4:pinge").is_err());
    }

    #[test]
    fn dict_macro_keeps_order() {
        let d = ng_dict! { "sdp" => "v=0", "result" => "ok" };
        assert_eq!(d.encode(), b"d3:sdp3:v=06:result2:oke");
    }
}
