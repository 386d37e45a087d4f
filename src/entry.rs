//! The binary envelope that cached responses and Vary markers are stored in.
//!
//! A store hands back whatever bytes sit under a key, and a shared Redis can be written by anyone
//! who reaches it. So this module treats every stored value as hostile input: [`EntryCodec::decode`]
//! checks the fixed prefix, the length and a keyed MAC before it looks at a single field, validates
//! every header name, header value and tag it rebuilds, and never allocates more than the input
//! actually holds. Any problem is a [`DecodeError`] that the caller turns into a miss plus a delete.
//!
//! # Layout
//!
//! All integers are big-endian. Every variable-length field is a `u32` length followed by the bytes.
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `TRCE` |
//! | 1 | format version (currently 1) |
//! | 1 | kind: 1 = response, 2 = Vary marker |
//! | 4 | total length of the envelope, MAC included |
//! | … | the payload for the kind (below) |
//! | 16 | HMAC-SHA-256 over everything before it, truncated to 16 bytes |
//!
//! A response payload is: request digest (16), target digest (16), `stored_at_ms` (`u64`),
//! `generation` (`u64`),
//! `ttl_secs`, `initial_age_secs`, `stale_while_revalidate_secs`, `stale_if_error_secs` (`u32`
//! each), status (`u16`), header count (`u32`) and that many name/value pairs, body, trailer count
//! (`u32`, where `0xFFFF_FFFF` means "no trailers frame") and that many name/value pairs, tag count
//! (`u16`) and that many tags.
//!
//! A Vary marker payload is: request digest (16), `stored_at_ms` (`u64`), `ttl_secs` (`u32`), field
//! count (`u16`) and that many field names.
//!
//! # Limits
//!
//! Decoding refuses more than 1024 fields in the header section (and, separately, in the trailer
//! section), more than 256 tags, more than 64 Vary fields, and tags that are not UTF-8, are longer
//! than 256 bytes or contain control characters. [`EntryCodec::encode`] does not check these
//! limits: an entry that breaks them encodes, but does not decode, so the caller validates tags
//! before storing.
//!
//! # Example
//!
//! ```
//! use tower_response_cache::entry::{EntryCodec, StoredEntry, VaryMarker};
//!
//! let codec = EntryCodec::new(b"a secret shared by every instance");
//! let marker = StoredEntry::Vary(VaryMarker {
//!     request_digest: [7; 16],
//!     stored_at_ms: 1_700_000_000_000,
//!     ttl_secs: 60,
//!     fields: vec![http::header::ACCEPT_ENCODING],
//! });
//! let bytes = codec.encode(&marker);
//! assert_eq!(EntryCodec::declared_len(&bytes), Ok(bytes.len()));
//! assert_eq!(codec.decode(&bytes, 1 << 20), Ok(marker));
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use hmac::digest::{Key, KeyInit};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const MAGIC: [u8; 4] = *b"TRCE";
const VERSION: u8 = 1;
const KIND_RESPONSE: u8 = 1;
const KIND_VARY: u8 = 2;
/// A response whose body is LZ4-compressed (a little-endian `u32` of the original length, then
/// the LZ4 block). Only builds with the `compression` feature write or read it; others refuse it
/// as an unknown kind, which the layer treats as a miss.
#[cfg(feature = "compression")]
const KIND_RESPONSE_LZ4: u8 = 3;

/// Magic, version, kind and total length.
const PREFIX_LEN: usize = 4 + 1 + 1 + 4;
/// Length of the truncated HMAC at the end of the envelope.
const MAC_LEN: usize = 16;
/// The smallest envelope that can exist: a prefix and a MAC around an empty payload.
const MIN_ENVELOPE_LEN: usize = PREFIX_LEN + MAC_LEN;

const MAX_FIELDS: usize = 1024;
const MAX_TAGS: usize = 256;
const MAX_VARY_FIELDS: usize = 64;
const MAX_TAG_LEN: usize = 256;

/// Trailer count that stands for "the response had no trailers frame".
const NO_TRAILERS: u32 = u32::MAX;
/// The fewest bytes one encoded field line can take: two length prefixes and a one-byte name.
const MIN_FIELD_LEN: usize = 4 + 1 + 4;
/// The fewest bytes one encoded tag can take: its length prefix (a tag may be empty).
const MIN_TAG_LEN: usize = 4;
/// The fewest bytes one encoded Vary field name can take: its length prefix and one byte.
const MIN_NAME_LEN: usize = 4 + 1;

/// One stored HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// Digest of the full request key; the caller compares it with the key it looked up.
    pub request_digest: [u8; 16],
    /// Digest of the path and query alone, so all variants of a URL can be purged together.
    pub target_digest: [u8; 16],
    /// When the response was stored, in milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
    /// The path's purge generation the response was made under: an entry whose generation is
    /// not the path's current one was purged.
    pub generation: u64,
    /// How long the response stays fresh, counted from `stored_at_ms`.
    pub ttl_secs: u32,
    /// The response's corrected initial age (RFC 9111 section 4.2.3) at the time it was stored.
    pub initial_age_secs: u32,
    /// The `stale-while-revalidate` window past expiry, in seconds.
    pub stale_while_revalidate_secs: u32,
    /// The `stale-if-error` window past expiry, in seconds.
    pub stale_if_error_secs: u32,
    /// The response status.
    pub status: http::StatusCode,
    /// The stored header fields; repeated field lines keep their order within a name.
    pub headers: http::HeaderMap,
    /// The complete response body.
    pub body: bytes::Bytes,
    /// The trailer fields: `None` when the response had no trailers frame, `Some` (possibly
    /// empty) when it had one.
    pub trailers: Option<http::HeaderMap>,
    /// Purge tags attached to the response.
    pub tags: Vec<String>,
}

/// A marker at a path's base key naming the request fields its responses vary on.
#[derive(Debug, Clone, PartialEq)]
pub struct VaryMarker {
    /// Digest of the base request key the marker was stored under.
    pub request_digest: [u8; 16],
    /// When the marker was stored, in milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
    /// How long the marker stays valid, counted from `stored_at_ms`.
    pub ttl_secs: u32,
    /// The request header names listed in the response's `Vary`.
    pub fields: Vec<http::HeaderName>,
}

/// Anything that can sit under a cache key.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "entries are decoded one at a time and moved rarely; a Box would cost an allocation per hit"
)]
pub enum StoredEntry {
    /// A complete response.
    Response(StoredResponse),
    /// A pointer saying which request fields select the variant.
    Vary(VaryMarker),
}

impl StoredEntry {
    /// The request digest recorded in the entry, whichever kind it is.
    pub fn request_digest(&self) -> &[u8; 16] {
        match self {
            StoredEntry::Response(response) => &response.request_digest,
            StoredEntry::Vary(marker) => &marker.request_digest,
        }
    }
}

/// Why a stored value was refused. Every variant means the value must be treated as a miss.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The value is shorter than the fixed prefix, or declares a length smaller than the
    /// smallest possible envelope.
    #[error("entry is shorter than the envelope's fixed parts")]
    TooShort,
    /// The value does not start with the entry magic, or names an entry kind this build does
    /// not know.
    #[error("entry has an unknown magic or kind")]
    BadMagic,
    /// A compressed body does not decompress to its declared length.
    #[error("entry has a body that does not decompress")]
    BadCompression,
    /// The value was written in a format version this build cannot read.
    #[error("entry format version {0} is not supported")]
    UnsupportedVersion(u8),
    /// The declared or the actual length is over the caller's cap.
    #[error("entry is larger than the allowed maximum")]
    TooLarge,
    /// The value ends before its declared length, or a field runs past the end of the payload.
    #[error("entry is truncated")]
    Truncated,
    /// Bytes are left over after the declared length or after the last field.
    #[error("entry has trailing bytes")]
    TrailingBytes,
    /// The MAC does not match: the value was corrupted, forged, or written with another secret.
    #[error("entry failed authentication")]
    BadChecksum,
    /// The stored status code is outside 100..=999.
    #[error("entry has an invalid status code")]
    BadStatus,
    /// A stored header or Vary field name is not a valid field name.
    #[error("entry has an invalid header name")]
    BadHeaderName,
    /// A stored header value contains bytes a field value may not hold (such as CR, LF or NUL).
    #[error("entry has an invalid header value")]
    BadHeaderValue,
    /// A stored tag is not UTF-8, is too long, or contains control characters.
    #[error("entry has an invalid tag")]
    BadTag,
    /// The entry holds more header fields, tags or Vary fields than allowed.
    #[error("entry has too many fields")]
    TooManyFields,
}

impl DecodeError {
    /// A short, stable name for the error, for use as a counter label or a log field.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecodeError::TooShort => "too_short",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::BadCompression => "bad_compression",
            DecodeError::UnsupportedVersion(_) => "unsupported_version",
            DecodeError::TooLarge => "too_large",
            DecodeError::Truncated => "truncated",
            DecodeError::TrailingBytes => "trailing_bytes",
            DecodeError::BadChecksum => "bad_checksum",
            DecodeError::BadStatus => "bad_status",
            DecodeError::BadHeaderName => "bad_header_name",
            DecodeError::BadHeaderValue => "bad_header_value",
            DecodeError::BadTag => "bad_tag",
            DecodeError::TooManyFields => "too_many_fields",
        }
    }
}

/// Encodes and decodes entries, authenticating each one with a secret key.
///
/// Cloning is cheap: clones share one keyed MAC state.
#[derive(Clone)]
pub struct EntryCodec {
    /// HMAC-SHA-256 already keyed with the secret; cloned for every entry.
    mac: Arc<HmacSha256>,
    /// Bodies longer than this are stored LZ4-compressed (feature `compression`).
    compress_above: Option<usize>,
}

impl fmt::Debug for EntryCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryCodec")
            .field("key", &"set")
            .field("compress_above", &self.compress_above)
            .finish()
    }
}

impl EntryCodec {
    /// Creates a codec that signs and verifies entries with `secret`.
    ///
    /// Every instance sharing a store must use the same secret; an entry written with another
    /// secret decodes as [`DecodeError::BadChecksum`]. An empty secret still detects corruption
    /// but no longer stops forgery.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            mac: Arc::new(keyed_mac(secret)),
            compress_above: None,
        }
    }

    /// Store response bodies longer than `bytes` LZ4-compressed, when that makes them smaller
    /// (feature `compression`). Decoding always accepts both forms.
    #[cfg(feature = "compression")]
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = Some(bytes);
        self
    }

    /// The body threshold set by [`EntryCodec::compress_above`], if any.
    pub fn compression_threshold(&self) -> Option<usize> {
        self.compress_above
    }

    /// Encodes `entry` into a signed envelope, allocating exactly its size once.
    ///
    /// Encoding does not enforce the decode limits (see the module docs): an entry with too many
    /// fields or an invalid tag produces an envelope that [`EntryCodec::decode`] refuses. A field
    /// longer than `u32::MAX` bytes cannot be represented and also yields an undecodable
    /// envelope.
    pub fn encode(&self, entry: &StoredEntry) -> Bytes {
        #[cfg(feature = "compression")]
        if let (StoredEntry::Response(response), Some(threshold)) = (entry, self.compress_above) {
            if response.body.len() > threshold {
                if let Some(compressed) = compress(&response.body) {
                    let mut smaller = response.clone();
                    smaller.body = compressed;
                    return self.seal_entry(&StoredEntry::Response(smaller), KIND_RESPONSE_LZ4);
                }
            }
        }
        let kind = match entry {
            StoredEntry::Response(_) => KIND_RESPONSE,
            StoredEntry::Vary(_) => KIND_VARY,
        };
        self.seal_entry(entry, kind)
    }

    /// The signed envelope of `entry` under `kind`.
    fn seal_entry(&self, entry: &StoredEntry, kind: u8) -> Bytes {
        let total = encoded_len(entry);
        let mut out = Vec::with_capacity(total);
        out.put_slice(&MAGIC);
        out.put_u8(VERSION);
        out.put_u8(kind);
        out.put_u32(len_u32(total));
        match entry {
            StoredEntry::Response(response) => write_response(&mut out, response),
            StoredEntry::Vary(marker) => write_vary(&mut out, marker),
        }
        let tag = self.tag(&out);
        out.put_slice(&tag);
        Bytes::from(out)
    }

    /// Decodes untrusted bytes.
    ///
    /// `max_len` caps the whole envelope (the caller passes its maximum body size plus room for
    /// headers). The prefix, the length and the MAC are checked before any field is parsed, and
    /// only an authenticated payload is copied, once: the decoded body and header values are
    /// slices of that one copy. Anything wrong is an `Err`: decoding never panics and never
    /// allocates beyond what the input holds and `max_len` allows.
    pub fn decode(&self, bytes: &[u8], max_len: usize) -> Result<StoredEntry, DecodeError> {
        self.decode_with(bytes, max_len, Bytes::copy_from_slice)
    }

    /// [`EntryCodec::decode`] for a value already held as [`Bytes`] (as stores return them):
    /// the same checks, and the decoded body and header values are slices of `bytes` itself,
    /// so nothing is copied.
    pub fn decode_shared(&self, bytes: &Bytes, max_len: usize) -> Result<StoredEntry, DecodeError> {
        self.decode_with(bytes, max_len, |payload| bytes.slice_ref(payload))
    }

    /// The checks and the parse of [`EntryCodec::decode`]; `share` turns the authenticated
    /// payload (a sub-slice of `bytes`) into the [`Bytes`] the fields are sliced from.
    fn decode_with(
        &self,
        bytes: &[u8],
        max_len: usize,
        share: impl FnOnce(&[u8]) -> Bytes,
    ) -> Result<StoredEntry, DecodeError> {
        if bytes.len() > max_len {
            return Err(DecodeError::TooLarge);
        }
        let prefix = Prefix::parse(bytes)?;
        if prefix.total_len > max_len {
            return Err(DecodeError::TooLarge);
        }
        if bytes.len() < prefix.total_len {
            return Err(DecodeError::Truncated);
        }
        if bytes.len() > prefix.total_len {
            return Err(DecodeError::TrailingBytes);
        }
        // `Prefix::parse` guarantees `total_len >= MIN_ENVELOPE_LEN`, so this cannot underflow.
        let signed_len = prefix.total_len - MAC_LEN;
        let (signed, tag) = bytes
            .split_at_checked(signed_len)
            .ok_or(DecodeError::Truncated)?;
        self.verify(signed, tag)?;

        let payload = signed.get(PREFIX_LEN..).ok_or(DecodeError::Truncated)?;
        let payload = share(payload);
        let mut cursor = Cursor::new(&payload);
        let entry = match prefix.kind {
            Kind::Response => StoredEntry::Response(read_response(&mut cursor)?),
            #[cfg(feature = "compression")]
            Kind::CompressedResponse => {
                let mut response = read_response(&mut cursor)?;
                response.body = decompress(&response.body, max_len)?;
                // The field values are slices of the payload, which holds the compressed body:
                // copy them, so that a kept entry (the near cache) holds only what it counts.
                response.headers = owned_fields(&response.headers);
                response.trailers = response.trailers.as_ref().map(owned_fields);
                StoredEntry::Response(response)
            }
            Kind::Vary => StoredEntry::Vary(read_vary(&mut cursor)?),
        };
        cursor.finish()?;
        Ok(entry)
    }

    /// Reads the declared total length from the first bytes of a value (at least 10 are
    /// needed), after checking the magic, version and kind.
    ///
    /// A store can call this on a short prefix of a value and refuse an oversized one without
    /// reading it all. The length is not authenticated; [`EntryCodec::decode`] checks it again.
    pub fn declared_len(prefix: &[u8]) -> Result<usize, DecodeError> {
        Prefix::parse(prefix).map(|prefix| prefix.total_len)
    }

    /// The truncated MAC over `signed`.
    fn tag(&self, signed: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = HmacSha256::clone(&self.mac);
        mac.update(signed);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; MAC_LEN];
        for (out, byte) in tag.iter_mut().zip(full.iter()) {
            *out = *byte;
        }
        tag
    }

    /// Checks `tag` against the MAC over `signed`, in constant time.
    fn verify(&self, signed: &[u8], tag: &[u8]) -> Result<(), DecodeError> {
        if tag.len() != MAC_LEN {
            return Err(DecodeError::BadChecksum);
        }
        let mut mac = HmacSha256::clone(&self.mac);
        mac.update(signed);
        mac.verify_truncated_left(tag)
            .map_err(|_| DecodeError::BadChecksum)
    }
}

/// `body` as the compressed form of the envelope (original length, then the LZ4 block), or
/// `None` when that is not smaller.
#[cfg(feature = "compression")]
fn compress(body: &[u8]) -> Option<Bytes> {
    let compressed = lz4_flex::block::compress_prepend_size(body);
    (compressed.len() < body.len()).then(|| Bytes::from(compressed))
}

/// `fields` with every value in memory of its own.
#[cfg(feature = "compression")]
fn owned_fields(fields: &HeaderMap) -> HeaderMap {
    let mut owned = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        // A value copied from a valid value is valid: nothing is dropped here.
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            owned.append(name.clone(), copy);
        }
    }
    owned
}

/// The body of a compressed envelope. The declared length is checked against `max_len` before
/// anything is allocated, and the block must fill it exactly.
#[cfg(feature = "compression")]
fn decompress(stored: &[u8], max_len: usize) -> Result<Bytes, DecodeError> {
    let (len, block) = stored.split_at_checked(4).ok_or(DecodeError::Truncated)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
    let len = usize::try_from(len).map_err(|_| DecodeError::TooLarge)?;
    if len > max_len {
        return Err(DecodeError::TooLarge);
    }
    let mut body = vec![0; len];
    match lz4_flex::block::decompress_into(block, &mut body) {
        Ok(written) if written == len => Ok(Bytes::from(body)),
        _ => Err(DecodeError::BadCompression),
    }
}

/// Keys HMAC-SHA-256 with `secret`, preparing the key block as RFC 2104 does (a key longer than
/// the hash block is hashed first, a shorter one is zero-padded) so no fallible call is needed.
fn keyed_mac(secret: &[u8]) -> HmacSha256 {
    let mut block = Key::<HmacSha256>::default();
    if secret.len() > block.len() {
        let digest = Sha256::digest(secret);
        for (out, byte) in block.iter_mut().zip(digest.iter()) {
            *out = *byte;
        }
    } else {
        for (out, byte) in block.iter_mut().zip(secret.iter()) {
            *out = *byte;
        }
    }
    <HmacSha256 as KeyInit>::new(&block)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Response,
    /// A response with an LZ4-compressed body.
    #[cfg(feature = "compression")]
    CompressedResponse,
    Vary,
}

/// The fixed, unauthenticated start of an envelope.
#[derive(Debug)]
struct Prefix {
    kind: Kind,
    total_len: usize,
}

impl Prefix {
    fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some(&[m0, m1, m2, m3, version, kind, l0, l1, l2, l3]) = bytes.get(..PREFIX_LEN) else {
            return Err(DecodeError::TooShort);
        };
        if [m0, m1, m2, m3] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = match kind {
            KIND_RESPONSE => Kind::Response,
            #[cfg(feature = "compression")]
            KIND_RESPONSE_LZ4 => Kind::CompressedResponse,
            KIND_VARY => Kind::Vary,
            _ => return Err(DecodeError::BadMagic),
        };
        let total_len = u32::from_be_bytes([l0, l1, l2, l3]);
        // On a target where usize is narrower than u32 the value cannot fit in memory anyway.
        let total_len = usize::try_from(total_len).map_err(|_| DecodeError::TooLarge)?;
        if total_len < MIN_ENVELOPE_LEN {
            return Err(DecodeError::TooShort);
        }
        Ok(Self { kind, total_len })
    }
}

// ---- encoding ----

/// A length or count as written to the envelope. Values that do not fit saturate, which makes
/// the envelope fail to decode instead of silently decoding as something else.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn count_u16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

fn fields_len(map: &HeaderMap) -> usize {
    map.iter().fold(4usize, |acc, (name, value)| {
        acc.saturating_add(8)
            .saturating_add(name.as_str().len())
            .saturating_add(value.len())
    })
}

fn encoded_len(entry: &StoredEntry) -> usize {
    let payload = match entry {
        StoredEntry::Response(r) => {
            let fixed: usize = 16 + 16 + 8 + 8 + 4 * 4 + 2;
            let trailers = r.trailers.as_ref().map_or(4, fields_len);
            let tags = r.tags.iter().fold(2usize, |acc, tag| {
                acc.saturating_add(4).saturating_add(tag.len())
            });
            fixed
                .saturating_add(fields_len(&r.headers))
                .saturating_add(4)
                .saturating_add(r.body.len())
                .saturating_add(trailers)
                .saturating_add(tags)
        }
        StoredEntry::Vary(v) => {
            let fixed: usize = 16 + 8 + 4;
            v.fields.iter().fold(fixed + 2, |acc, name| {
                acc.saturating_add(4).saturating_add(name.as_str().len())
            })
        }
    };
    payload.saturating_add(MIN_ENVELOPE_LEN)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.put_u32(len_u32(bytes.len()));
    out.put_slice(bytes);
}

fn write_fields(out: &mut Vec<u8>, map: &HeaderMap) {
    out.put_u32(len_u32(map.len()));
    for (name, value) in map {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

fn write_response(out: &mut Vec<u8>, r: &StoredResponse) {
    out.put_slice(&r.request_digest);
    out.put_slice(&r.target_digest);
    out.put_u64(r.stored_at_ms);
    out.put_u64(r.generation);
    out.put_u32(r.ttl_secs);
    out.put_u32(r.initial_age_secs);
    out.put_u32(r.stale_while_revalidate_secs);
    out.put_u32(r.stale_if_error_secs);
    out.put_u16(r.status.as_u16());
    write_fields(out, &r.headers);
    put_bytes(out, &r.body);
    match &r.trailers {
        Some(trailers) => write_fields(out, trailers),
        None => out.put_u32(NO_TRAILERS),
    }
    out.put_u16(count_u16(r.tags.len()));
    for tag in &r.tags {
        put_bytes(out, tag.as_bytes());
    }
}

fn write_vary(out: &mut Vec<u8>, v: &VaryMarker) {
    out.put_slice(&v.request_digest);
    out.put_u64(v.stored_at_ms);
    out.put_u32(v.ttl_secs);
    out.put_u16(count_u16(v.fields.len()));
    for name in &v.fields {
        put_bytes(out, name.as_str().as_bytes());
    }
}

// ---- decoding ----

/// Reads fields off an authenticated payload; every short read is [`DecodeError::Truncated`].
struct Cursor<'a> {
    payload: &'a Bytes,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(payload: &'a Bytes) -> Self {
        Self { payload, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.payload.len().saturating_sub(self.pos)
    }

    /// The next `len` bytes, borrowed.
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let payload: &'a [u8] = self.payload;
        let end = self.pos.checked_add(len).ok_or(DecodeError::Truncated)?;
        let bytes = payload.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    /// The next `len` bytes as a shared slice of the payload (no copy).
    fn take_shared(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(len)?;
        // `take` just proved that `start..self.pos` lies inside the payload.
        Ok(self.payload.slice(start..self.pos))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| DecodeError::Truncated)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    /// A `u32` length prefix, checked against what is left before anything uses it.
    fn len(&mut self) -> Result<usize, DecodeError> {
        let len = usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated)?;
        if len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(len)
    }

    /// A count of items, each at least `min_item_len` bytes, capped at `max`.
    fn count(&mut self, raw: usize, max: usize, min_item_len: usize) -> Result<usize, DecodeError> {
        if raw > max {
            return Err(DecodeError::TooManyFields);
        }
        if raw.saturating_mul(min_item_len) > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(raw)
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

fn read_name(cursor: &mut Cursor<'_>) -> Result<HeaderName, DecodeError> {
    let len = cursor.len()?;
    HeaderName::from_bytes(cursor.take(len)?).map_err(|_| DecodeError::BadHeaderName)
}

/// Reads `raw_count` field lines into a new map, in their stored order.
fn read_fields(cursor: &mut Cursor<'_>, raw_count: u32) -> Result<HeaderMap, DecodeError> {
    let raw_count = usize::try_from(raw_count).map_err(|_| DecodeError::TooManyFields)?;
    let count = cursor.count(raw_count, MAX_FIELDS, MIN_FIELD_LEN)?;
    let mut map = HeaderMap::try_with_capacity(count).map_err(|_| DecodeError::TooManyFields)?;
    for _ in 0..count {
        let name = read_name(cursor)?;
        let len = cursor.len()?;
        let value = HeaderValue::from_maybe_shared(cursor.take_shared(len)?)
            .map_err(|_| DecodeError::BadHeaderValue)?;
        map.try_append(name, value)
            .map_err(|_| DecodeError::TooManyFields)?;
    }
    Ok(map)
}

fn read_tag(cursor: &mut Cursor<'_>) -> Result<String, DecodeError> {
    let len = cursor.len()?;
    if len > MAX_TAG_LEN {
        return Err(DecodeError::BadTag);
    }
    let tag = std::str::from_utf8(cursor.take(len)?).map_err(|_| DecodeError::BadTag)?;
    if tag.chars().any(char::is_control) {
        return Err(DecodeError::BadTag);
    }
    Ok(tag.to_owned())
}

fn read_response(cursor: &mut Cursor<'_>) -> Result<StoredResponse, DecodeError> {
    let request_digest = cursor.array()?;
    let target_digest = cursor.array()?;
    let stored_at_ms = cursor.u64()?;
    let generation = cursor.u64()?;
    let ttl_secs = cursor.u32()?;
    let initial_age_secs = cursor.u32()?;
    let stale_while_revalidate_secs = cursor.u32()?;
    let stale_if_error_secs = cursor.u32()?;
    let status = StatusCode::from_u16(cursor.u16()?).map_err(|_| DecodeError::BadStatus)?;
    let header_count = cursor.u32()?;
    let headers = read_fields(cursor, header_count)?;
    let body_len = cursor.len()?;
    let body = cursor.take_shared(body_len)?;
    let trailers = match cursor.u32()? {
        NO_TRAILERS => None,
        count => Some(read_fields(cursor, count)?),
    };
    let raw_tag_count = usize::from(cursor.u16()?);
    let tag_count = cursor.count(raw_tag_count, MAX_TAGS, MIN_TAG_LEN)?;
    let mut tags = Vec::with_capacity(tag_count);
    for _ in 0..tag_count {
        tags.push(read_tag(cursor)?);
    }
    Ok(StoredResponse {
        request_digest,
        target_digest,
        stored_at_ms,
        generation,
        ttl_secs,
        initial_age_secs,
        stale_while_revalidate_secs,
        stale_if_error_secs,
        status,
        headers,
        body,
        trailers,
        tags,
    })
}

fn read_vary(cursor: &mut Cursor<'_>) -> Result<VaryMarker, DecodeError> {
    let request_digest = cursor.array()?;
    let stored_at_ms = cursor.u64()?;
    let ttl_secs = cursor.u32()?;
    let raw_count = usize::from(cursor.u16()?);
    let count = cursor.count(raw_count, MAX_VARY_FIELDS, MIN_NAME_LEN)?;
    let mut fields = Vec::with_capacity(count);
    for _ in 0..count {
        fields.push(read_name(cursor)?);
    }
    Ok(VaryMarker {
        request_digest,
        stored_at_ms,
        ttl_secs,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use proptest::prelude::*;

    const CAP: usize = 1 << 20;

    fn codec() -> EntryCodec {
        EntryCodec::new(b"test secret for the entry codec")
    }

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn sample_response() -> StoredResponse {
        StoredResponse {
            request_digest: [1; 16],
            target_digest: [2; 16],
            stored_at_ms: 1_700_000_000_123,
            generation: 7,
            ttl_secs: 300,
            initial_age_secs: 4,
            stale_while_revalidate_secs: 30,
            stale_if_error_secs: 600,
            status: StatusCode::OK,
            headers: headers(&[
                ("content-type", "text/html; charset=utf-8"),
                ("cache-control", "public, max-age=300"),
                ("link", "</a.css>; rel=preload"),
                ("x-custom-thing", "first"),
                ("link", "</b.js>; rel=preload"),
                ("x-custom-thing", "second"),
                ("x-obs-text", "caf\u{e9}"),
            ]),
            body: Bytes::from_static(b"<html>hello</html>"),
            trailers: Some(headers(&[("grpc-status", "0"), ("grpc-message", "")])),
            tags: vec![
                "product:42".to_owned(),
                "caf\u{e9}".to_owned(),
                String::new(),
            ],
        }
    }

    fn sample_vary() -> VaryMarker {
        VaryMarker {
            request_digest: [9; 16],
            stored_at_ms: 1_700_000_000_000,
            ttl_secs: 60,
            fields: vec![header::ACCEPT_ENCODING, HeaderName::from_static("x-tenant")],
        }
    }

    fn round_trip(entry: StoredEntry) -> StoredEntry {
        let codec = codec();
        let bytes = codec.encode(&entry);
        codec.decode(&bytes, CAP).unwrap()
    }

    /// Wraps `payload` in a prefix with the right length and a valid MAC, as a writer holding
    /// the secret could.
    fn seal(codec: &EntryCodec, kind: u8, payload: &[u8]) -> Vec<u8> {
        let total = MIN_ENVELOPE_LEN + payload.len();
        let mut out = Vec::with_capacity(total);
        out.put_slice(&MAGIC);
        out.put_u8(VERSION);
        out.put_u8(kind);
        out.put_u32(u32::try_from(total).unwrap());
        out.put_slice(payload);
        let tag = codec.tag(&out);
        out.put_slice(&tag);
        out
    }

    /// The payload of an encoded envelope (between the prefix and the MAC).
    fn payload_of(bytes: &[u8]) -> Vec<u8> {
        bytes[PREFIX_LEN..bytes.len() - MAC_LEN].to_vec()
    }

    /// Re-signs `bytes` after the prefix's length is fixed up; used on mutated envelopes.
    fn reseal(codec: &EntryCodec, bytes: &[u8]) -> Vec<u8> {
        let kind = bytes.get(5).copied().unwrap_or(KIND_RESPONSE);
        let payload = bytes.get(PREFIX_LEN..).unwrap_or_default();
        seal(codec, kind, payload)
    }

    /// A response payload built field by field, so tests can put in bytes `encode` never would.
    struct RawResponse {
        status: u16,
        header_count: Option<u32>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        trailer_count: u32,
        tag_count: Option<u16>,
        tags: Vec<Vec<u8>>,
    }

    impl RawResponse {
        fn new() -> Self {
            Self {
                status: 200,
                header_count: None,
                headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())],
                trailer_count: NO_TRAILERS,
                tag_count: None,
                tags: Vec::new(),
            }
        }

        fn header(mut self, name: &[u8], value: &[u8]) -> Self {
            self.headers.push((name.to_vec(), value.to_vec()));
            self
        }

        fn tag(mut self, tag: &[u8]) -> Self {
            self.tags.push(tag.to_vec());
            self
        }

        fn payload(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.put_slice(&[1; 16]);
            out.put_slice(&[2; 16]);
            out.put_u64(1);
            out.put_u64(0);
            out.put_u32(60);
            out.put_u32(0);
            out.put_u32(0);
            out.put_u32(0);
            out.put_u16(self.status);
            let header_count = u32::try_from(self.headers.len()).unwrap();
            out.put_u32(self.header_count.unwrap_or(header_count));
            for (name, value) in &self.headers {
                put_bytes(&mut out, name);
                put_bytes(&mut out, value);
            }
            put_bytes(&mut out, b"body");
            out.put_u32(self.trailer_count);
            let tag_count = u16::try_from(self.tags.len()).unwrap();
            out.put_u16(self.tag_count.unwrap_or(tag_count));
            for tag in &self.tags {
                put_bytes(&mut out, tag);
            }
            out
        }

        fn sealed(&self, codec: &EntryCodec) -> Vec<u8> {
            seal(codec, KIND_RESPONSE, &self.payload())
        }
    }

    fn vary_payload(count: u16, names: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_slice(&[9; 16]);
        out.put_u64(1);
        out.put_u32(60);
        out.put_u16(count);
        for name in names {
            put_bytes(&mut out, name);
        }
        out
    }

    // ---- round trips ----

    #[test]
    fn a_full_response_round_trips_unchanged() {
        let entry = StoredEntry::Response(sample_response());
        assert_eq!(round_trip(entry.clone()), entry);
    }

    #[test]
    fn a_shared_decode_slices_the_body_out_of_the_stored_value() {
        let codec = codec();
        let bytes = codec.encode(&StoredEntry::Response(sample_response()));
        let Ok(StoredEntry::Response(decoded)) = codec.decode_shared(&bytes, CAP) else {
            panic!("the sample must decode");
        };
        assert_eq!(decoded, sample_response());
        let range = bytes.as_ptr_range();
        assert!(
            range.contains(&decoded.body.as_ptr()),
            "the body was copied"
        );
    }

    #[test]
    fn repeated_field_lines_keep_their_order_within_a_name() {
        let StoredEntry::Response(decoded) = round_trip(StoredEntry::Response(sample_response()))
        else {
            panic!("expected a response");
        };
        let links: Vec<_> = decoded.headers.get_all(header::LINK).iter().collect();
        assert_eq!(links, ["</a.css>; rel=preload", "</b.js>; rel=preload"]);
        let custom: Vec<_> = decoded.headers.get_all("x-custom-thing").iter().collect();
        assert_eq!(custom, ["first", "second"]);
    }

    #[test]
    fn a_response_without_trailers_decodes_with_none() {
        let mut response = sample_response();
        response.trailers = None;
        let entry = StoredEntry::Response(response);
        assert_eq!(round_trip(entry.clone()), entry);
    }

    #[test]
    fn an_empty_trailers_frame_stays_distinct_from_no_trailers() {
        let mut response = sample_response();
        response.trailers = Some(HeaderMap::new());
        let StoredEntry::Response(decoded) = round_trip(StoredEntry::Response(response)) else {
            panic!("expected a response");
        };
        assert_eq!(decoded.trailers, Some(HeaderMap::new()));
    }

    #[test]
    fn an_empty_body_with_no_headers_or_tags_round_trips() {
        let response = StoredResponse {
            headers: HeaderMap::new(),
            body: Bytes::new(),
            trailers: None,
            tags: Vec::new(),
            status: StatusCode::NO_CONTENT,
            ..sample_response()
        };
        let entry = StoredEntry::Response(response);
        assert_eq!(round_trip(entry.clone()), entry);
    }

    #[test]
    fn a_vary_marker_round_trips_unchanged() {
        let entry = StoredEntry::Vary(sample_vary());
        assert_eq!(round_trip(entry.clone()), entry);
        let empty = StoredEntry::Vary(VaryMarker {
            fields: Vec::new(),
            ..sample_vary()
        });
        assert_eq!(round_trip(empty.clone()), empty);
    }

    #[test]
    fn request_digest_reads_either_kind() {
        assert_eq!(
            StoredEntry::Response(sample_response()).request_digest(),
            &[1; 16]
        );
        assert_eq!(StoredEntry::Vary(sample_vary()).request_digest(), &[9; 16]);
    }

    #[test]
    fn the_encoded_size_is_computed_exactly_and_declared_in_the_prefix() {
        for entry in [
            StoredEntry::Response(sample_response()),
            StoredEntry::Vary(sample_vary()),
        ] {
            let bytes = codec().encode(&entry);
            assert_eq!(encoded_len(&entry), bytes.len());
            assert_eq!(EntryCodec::declared_len(&bytes), Ok(bytes.len()));
            assert_eq!(
                EntryCodec::declared_len(&bytes[..PREFIX_LEN]),
                Ok(bytes.len())
            );
        }
    }

    #[test]
    fn the_envelope_starts_with_magic_version_and_kind() {
        let bytes = codec().encode(&StoredEntry::Vary(sample_vary()));
        assert_eq!(&bytes[..6], b"TRCE\x01\x02");
        let bytes = codec().encode(&StoredEntry::Response(sample_response()));
        assert_eq!(&bytes[..6], b"TRCE\x01\x01");
    }

    #[test]
    fn the_mac_is_standard_hmac_sha256_for_short_and_long_secrets() {
        for secret in [&b""[..], b"short", &[0xAB; 64], &[0xCD; 65], &[7; 200]] {
            let mut ours = keyed_mac(secret);
            let mut reference = <HmacSha256 as KeyInit>::new_from_slice(secret).unwrap();
            ours.update(b"message");
            reference.update(b"message");
            assert_eq!(
                ours.finalize().into_bytes(),
                reference.finalize().into_bytes()
            );
        }
    }

    #[test]
    fn debug_output_does_not_reveal_the_secret() {
        let shown = format!("{:?}", EntryCodec::new(b"hunter2"));
        assert_eq!(shown, r#"EntryCodec { key: "set", compress_above: None }"#);
    }

    // ---- rejection of bad envelopes ----

    #[test]
    fn every_truncation_of_a_real_entry_is_an_error() {
        let codec = codec();
        let bytes = codec.encode(&StoredEntry::Response(sample_response()));
        for len in 0..bytes.len() {
            let expected = if len < PREFIX_LEN {
                DecodeError::TooShort
            } else {
                DecodeError::Truncated
            };
            assert_eq!(
                codec.decode(&bytes[..len], CAP),
                Err(expected),
                "length {len}"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_an_error() {
        let codec = codec();
        for entry in [
            StoredEntry::Response(sample_response()),
            StoredEntry::Vary(sample_vary()),
        ] {
            let bytes = codec.encode(&entry);
            for bit in 0..bytes.len() * 8 {
                let mut flipped = bytes.to_vec();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(codec.decode(&flipped, CAP).is_err(), "bit {bit}");
            }
        }
    }

    #[test]
    fn a_flipped_payload_bit_fails_authentication() {
        let codec = codec();
        let mut bytes = codec
            .encode(&StoredEntry::Response(sample_response()))
            .to_vec();
        bytes[PREFIX_LEN + 3] ^= 0x10;
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::BadChecksum));
    }

    #[test]
    fn an_entry_written_with_another_secret_fails_authentication() {
        let bytes = EntryCodec::new(b"other secret").encode(&StoredEntry::Vary(sample_vary()));
        assert_eq!(codec().decode(&bytes, CAP), Err(DecodeError::BadChecksum));
    }

    #[test]
    fn a_value_without_the_magic_is_rejected() {
        let codec = codec();
        let mut bytes = codec.encode(&StoredEntry::Vary(sample_vary())).to_vec();
        bytes[0] = b'X';
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::BadMagic));
        assert_eq!(EntryCodec::declared_len(&bytes), Err(DecodeError::BadMagic));
        assert_eq!(
            codec.decode(b"{\"json\": \"not an entry\"}", CAP),
            Err(DecodeError::BadMagic)
        );
    }

    #[test]
    fn an_unknown_entry_kind_is_rejected_even_with_a_valid_mac() {
        let codec = codec();
        let bytes = seal(&codec, 9, &vary_payload(0, &[]));
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::BadMagic));
    }

    #[test]
    fn a_future_format_version_is_unsupported() {
        let codec = codec();
        let mut bytes = codec.encode(&StoredEntry::Vary(sample_vary())).to_vec();
        bytes[4] = 2;
        assert_eq!(
            codec.decode(&bytes, CAP),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert_eq!(
            EntryCodec::declared_len(&bytes),
            Err(DecodeError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn a_value_shorter_than_the_prefix_is_too_short() {
        assert_eq!(codec().decode(b"", CAP), Err(DecodeError::TooShort));
        assert_eq!(
            EntryCodec::declared_len(b"TRCE\x01"),
            Err(DecodeError::TooShort)
        );
    }

    #[test]
    fn a_declared_length_below_the_smallest_envelope_is_too_short() {
        let codec = codec();
        let mut bytes = codec.encode(&StoredEntry::Vary(sample_vary())).to_vec();
        bytes[6..10].copy_from_slice(&25u32.to_be_bytes());
        bytes.truncate(25);
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::TooShort));
        assert_eq!(EntryCodec::declared_len(&bytes), Err(DecodeError::TooShort));
    }

    #[test]
    fn a_declared_length_over_the_cap_is_refused_from_the_prefix_alone() {
        let codec = codec();
        let bytes = codec.encode(&StoredEntry::Response(sample_response()));
        // The 10-byte prefix of a 512 MiB value: rejected without the rest.
        let mut huge = bytes[..PREFIX_LEN].to_vec();
        huge[6..10].copy_from_slice(&(512u32 << 20).to_be_bytes());
        assert_eq!(EntryCodec::declared_len(&huge), Ok(512 << 20));
        assert_eq!(codec.decode(&huge, CAP), Err(DecodeError::TooLarge));
        // The real entry, with a cap one byte too small.
        assert_eq!(
            codec.decode(&bytes, bytes.len() - 1),
            Err(DecodeError::TooLarge)
        );
        assert!(codec.decode(&bytes, bytes.len()).is_ok());
    }

    #[test]
    fn an_actual_length_over_the_cap_is_too_large() {
        let codec = codec();
        let mut bytes = codec.encode(&StoredEntry::Vary(sample_vary())).to_vec();
        bytes.resize(CAP + 1, 0);
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::TooLarge));
    }

    #[test]
    fn bytes_after_the_declared_length_are_trailing() {
        let codec = codec();
        let mut bytes = codec.encode(&StoredEntry::Vary(sample_vary())).to_vec();
        bytes.push(0);
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn bytes_after_the_last_field_are_trailing_even_with_a_valid_mac() {
        let codec = codec();
        let mut payload = RawResponse::new().payload();
        payload.push(0);
        let bytes = seal(&codec, KIND_RESPONSE, &payload);
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn a_field_running_past_the_end_is_truncated_even_with_a_valid_mac() {
        let codec = codec();
        let payload = payload_of(&codec.encode(&StoredEntry::Response(sample_response())));
        for len in 0..payload.len() {
            let bytes = seal(&codec, KIND_RESPONSE, &payload[..len]);
            assert_eq!(
                codec.decode(&bytes, CAP),
                Err(DecodeError::Truncated),
                "payload length {len}"
            );
        }
        let mut huge_body = RawResponse::new().payload();
        let body_at = huge_body.len() - 4 - 2 - 4 - 4;
        huge_body[body_at..body_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let bytes = seal(&codec, KIND_RESPONSE, &huge_body);
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::Truncated));
    }

    #[test]
    fn a_crlf_in_a_stored_header_value_is_rejected_even_with_a_valid_mac() {
        let codec = codec();
        for value in [
            &b"ok\r\nset-cookie: session=attacker"[..],
            b"ok\nx: y",
            b"ok\r",
            b"nul\0byte",
        ] {
            let bytes = RawResponse::new()
                .header(b"x-injected", value)
                .sealed(&codec);
            assert_eq!(
                codec.decode(&bytes, CAP),
                Err(DecodeError::BadHeaderValue),
                "{value:?}"
            );
        }
    }

    #[test]
    fn a_crlf_in_a_stored_trailer_value_is_rejected() {
        let codec = codec();
        let mut raw = RawResponse::new();
        raw.trailer_count = 0;
        let mut payload = raw.payload();
        // Replace the empty trailer section (count 0, then the tag count) with one bad line.
        let tags_at = payload.len() - 2;
        let mut trailer = Vec::new();
        put_bytes(&mut trailer, b"grpc-status");
        put_bytes(&mut trailer, b"0\r\nx: y");
        payload[tags_at - 4..tags_at].copy_from_slice(&1u32.to_be_bytes());
        payload.splice(tags_at..tags_at, trailer);
        let bytes = seal(&codec, KIND_RESPONSE, &payload);
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::BadHeaderValue));
    }

    #[test]
    fn an_invalid_stored_header_name_is_rejected() {
        let codec = codec();
        for name in [&b""[..], b"bad name", b"colon:", b"new\nline"] {
            let bytes = RawResponse::new().header(name, b"v").sealed(&codec);
            assert_eq!(
                codec.decode(&bytes, CAP),
                Err(DecodeError::BadHeaderName),
                "{name:?}"
            );
        }
        let bytes = seal(&codec, KIND_VARY, &vary_payload(1, &[b"accept encoding"]));
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::BadHeaderName));
    }

    #[test]
    fn a_status_outside_the_three_digit_range_is_rejected() {
        let codec = codec();
        for status in [0, 99, 1000, u16::MAX] {
            let mut raw = RawResponse::new();
            raw.status = status;
            assert_eq!(
                codec.decode(&raw.sealed(&codec), CAP),
                Err(DecodeError::BadStatus),
                "status {status}"
            );
        }
    }

    #[test]
    fn invalid_tags_are_rejected() {
        let codec = codec();
        let too_long = vec![b'a'; MAX_TAG_LEN + 1];
        for tag in [
            &b"\xff\xfe"[..],
            b"line\nbreak",
            b"del\x7f",
            b"\xc2\x85",
            &too_long,
        ] {
            let bytes = RawResponse::new().tag(tag).sealed(&codec);
            assert_eq!(
                codec.decode(&bytes, CAP),
                Err(DecodeError::BadTag),
                "{tag:?}"
            );
        }
        let longest = vec![b'a'; MAX_TAG_LEN];
        let bytes = RawResponse::new().tag(&longest).sealed(&codec);
        assert!(codec.decode(&bytes, CAP).is_ok());
    }

    #[test]
    fn more_fields_than_allowed_are_refused_before_reading_them() {
        let codec = codec();

        let mut raw = RawResponse::new();
        raw.header_count = Some(1025);
        assert_eq!(
            codec.decode(&raw.sealed(&codec), CAP),
            Err(DecodeError::TooManyFields)
        );

        let mut raw = RawResponse::new();
        raw.trailer_count = 1025;
        assert_eq!(
            codec.decode(&raw.sealed(&codec), CAP),
            Err(DecodeError::TooManyFields)
        );

        let mut raw = RawResponse::new();
        raw.tag_count = Some(257);
        assert_eq!(
            codec.decode(&raw.sealed(&codec), CAP),
            Err(DecodeError::TooManyFields)
        );

        let bytes = seal(&codec, KIND_VARY, &vary_payload(65, &[]));
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::TooManyFields));
    }

    #[test]
    fn the_field_limits_themselves_are_accepted() {
        let codec = codec();
        let mut response = sample_response();
        response.headers = HeaderMap::new();
        for i in 0..MAX_FIELDS {
            response.headers.append(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        response.tags = (0..MAX_TAGS).map(|i| format!("t{i}")).collect();
        let entry = StoredEntry::Response(response);
        assert_eq!(codec.decode(&codec.encode(&entry), CAP), Ok(entry));

        let names: Vec<_> = (0..MAX_VARY_FIELDS)
            .map(|i| HeaderName::from_bytes(format!("x-v{i}").as_bytes()).unwrap())
            .collect();
        let entry = StoredEntry::Vary(VaryMarker {
            fields: names,
            ..sample_vary()
        });
        assert_eq!(codec.decode(&codec.encode(&entry), CAP), Ok(entry));
    }

    #[test]
    fn an_entry_over_the_limits_encodes_but_does_not_decode() {
        let codec = codec();
        let mut response = sample_response();
        response.tags = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        let bytes = codec.encode(&StoredEntry::Response(response));
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::TooManyFields));
    }

    #[test]
    fn a_count_larger_than_the_remaining_bytes_is_truncated() {
        let codec = codec();
        let mut raw = RawResponse::new();
        raw.header_count = Some(1024);
        assert_eq!(
            codec.decode(&raw.sealed(&codec), CAP),
            Err(DecodeError::Truncated)
        );
        let bytes = seal(&codec, KIND_VARY, &vary_payload(64, &[b"accept"]));
        assert_eq!(codec.decode(&bytes, CAP), Err(DecodeError::Truncated));
    }

    #[test]
    fn uppercase_stored_names_are_normalised_not_rejected() {
        let codec = codec();
        let bytes = RawResponse::new().header(b"X-Upper", b"v").sealed(&codec);
        let Ok(StoredEntry::Response(decoded)) = codec.decode(&bytes, CAP) else {
            panic!("expected a response");
        };
        assert_eq!(decoded.headers.get("x-upper").unwrap(), "v");
    }

    #[test]
    fn error_names_are_stable_and_distinct() {
        let all = [
            (DecodeError::TooShort, "too_short"),
            (DecodeError::BadMagic, "bad_magic"),
            (DecodeError::UnsupportedVersion(9), "unsupported_version"),
            (DecodeError::TooLarge, "too_large"),
            (DecodeError::Truncated, "truncated"),
            (DecodeError::TrailingBytes, "trailing_bytes"),
            (DecodeError::BadChecksum, "bad_checksum"),
            (DecodeError::BadStatus, "bad_status"),
            (DecodeError::BadHeaderName, "bad_header_name"),
            (DecodeError::BadHeaderValue, "bad_header_value"),
            (DecodeError::BadTag, "bad_tag"),
            (DecodeError::TooManyFields, "too_many_fields"),
        ];
        for (error, name) in &all {
            assert_eq!(error.as_str(), *name);
            assert!(!error.to_string().is_empty());
        }
        let mut names: Vec<_> = all.iter().map(|(error, _)| error.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert_eq!(
            DecodeError::UnsupportedVersion(9).to_string(),
            "entry format version 9 is not supported"
        );
    }

    // ---- properties ----

    fn header_name() -> impl Strategy<Value = HeaderName> {
        prop_oneof![
            prop::sample::select(vec![
                header::CONTENT_TYPE,
                header::CACHE_CONTROL,
                header::ETAG,
                header::LINK,
                header::VARY,
                header::CONTENT_ENCODING,
            ]),
            "[a-z][a-z0-9!#$%&'*+.^_`|~-]{0,24}"
                .prop_map(|name| HeaderName::from_bytes(name.as_bytes()).unwrap()),
        ]
    }

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        let byte = prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff];
        prop::collection::vec(byte, 0..48)
            .prop_map(|bytes| HeaderValue::from_bytes(&bytes).unwrap())
    }

    fn header_map() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec((header_name(), header_value()), 0..24).prop_map(|lines| {
            let mut map = HeaderMap::new();
            for (name, value) in lines {
                map.append(name, value);
            }
            map
        })
    }

    fn response() -> impl Strategy<Value = StoredResponse> {
        let digests = (any::<[u8; 16]>(), any::<[u8; 16]>());
        let times = (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        );
        let status = (100u16..=999).prop_map(|code| StatusCode::from_u16(code).unwrap());
        let body = prop::collection::vec(any::<u8>(), 0..512).prop_map(Bytes::from);
        let tags = prop::collection::vec("\\PC{0,40}", 0..8);
        (
            digests,
            times,
            status,
            header_map(),
            body,
            prop::option::of(header_map()),
            tags,
        )
            .prop_map(
                |(
                    (request_digest, target_digest),
                    (at, ttl, age, swr, sie),
                    status,
                    headers,
                    body,
                    trailers,
                    tags,
                )| {
                    StoredResponse {
                        request_digest,
                        target_digest,
                        stored_at_ms: at,
                        generation: at.rotate_left(17),
                        ttl_secs: ttl,
                        initial_age_secs: age,
                        stale_while_revalidate_secs: swr,
                        stale_if_error_secs: sie,
                        status,
                        headers,
                        body,
                        trailers,
                        tags,
                    }
                },
            )
    }

    fn vary() -> impl Strategy<Value = VaryMarker> {
        (
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<u32>(),
            prop::collection::vec(header_name(), 0..MAX_VARY_FIELDS),
        )
            .prop_map(
                |(request_digest, stored_at_ms, ttl_secs, fields)| VaryMarker {
                    request_digest,
                    stored_at_ms,
                    ttl_secs,
                    fields,
                },
            )
    }

    fn entry() -> impl Strategy<Value = StoredEntry> {
        prop_oneof![
            response().prop_map(StoredEntry::Response),
            vary().prop_map(StoredEntry::Vary),
        ]
    }

    // ---- compression ----

    #[cfg(feature = "compression")]
    fn with_body(body: Vec<u8>) -> StoredEntry {
        let mut response = sample_response();
        response.body = Bytes::from(body);
        StoredEntry::Response(response)
    }

    #[cfg(feature = "compression")]
    #[test]
    fn a_compressible_body_is_stored_compressed_and_comes_back_whole() {
        let codec = codec().compress_above(1024);
        let body: Vec<u8> = br#"{"id":42,"name":"item","tags":["a","b"]},"#
            .iter()
            .copied()
            .cycle()
            .take(64 * 1024)
            .collect();
        let entry = with_body(body.clone());
        let bytes = codec.encode(&entry);
        assert_eq!(bytes[5], KIND_RESPONSE_LZ4);
        assert!(bytes.len() < body.len() / 4, "{} bytes", bytes.len());
        assert_eq!(codec.decode(&bytes, CAP), Ok(entry.clone()));
        assert_eq!(codec.decode_shared(&bytes, CAP), Ok(entry));
    }

    #[cfg(feature = "compression")]
    #[test]
    fn small_and_incompressible_bodies_are_stored_as_they_are() {
        let codec = codec().compress_above(1024);
        let small = with_body(vec![b'a'; 1000]);
        assert_eq!(codec.encode(&small)[5], KIND_RESPONSE);
        let mut rng = fastrand::Rng::with_seed(7);
        let noise: Vec<u8> = (0..8192).map(|_| rng.u8(..)).collect();
        let noisy = with_body(noise);
        let bytes = codec.encode(&noisy);
        assert_eq!(bytes[5], KIND_RESPONSE);
        assert_eq!(codec.decode(&bytes, CAP), Ok(noisy));
    }

    #[cfg(feature = "compression")]
    #[test]
    fn a_compressed_body_that_claims_too_much_or_does_not_decompress_is_refused() {
        let codec = codec().compress_above(0);
        let entry = with_body(vec![b'x'; 4096]);
        let bytes = codec.encode(&entry);
        assert_eq!(bytes[5], KIND_RESPONSE_LZ4);
        // The decompressed body must fit the cap, however small the stored value is.
        assert_eq!(codec.decode(&bytes, 2048), Err(DecodeError::TooLarge));
        // A signed envelope whose block is damaged is refused, not half-decoded.
        let payload = &bytes[PREFIX_LEN..bytes.len() - MAC_LEN];
        let body_at = payload
            .windows(4)
            .position(|w| w == 4096u32.to_le_bytes())
            .expect("the declared length is in the payload");
        let mut damaged = payload.to_vec();
        damaged[body_at] = 0xff;
        let sealed = seal(&codec, KIND_RESPONSE_LZ4, &damaged);
        assert!(codec.decode(&sealed, CAP).is_err());
        // A build or codec without compression never writes the compressed kind.
        assert_eq!(self::codec().encode(&entry)[5], KIND_RESPONSE);
    }

    #[cfg(feature = "compression")]
    proptest! {
        #[test]
        fn any_entry_round_trips_through_compression(entry in entry()) {
            let codec = codec().compress_above(0);
            let bytes = codec.encode(&entry);
            prop_assert_eq!(codec.decode(&bytes, CAP), Ok(entry));
        }
    }

    proptest! {
        #[test]
        fn any_valid_entry_round_trips(entry in entry()) {
            let codec = codec();
            let bytes = codec.encode(&entry);
            prop_assert_eq!(bytes.len(), encoded_len(&entry));
            prop_assert_eq!(EntryCodec::declared_len(&bytes), Ok(bytes.len()));
            prop_assert_eq!(codec.decode(&bytes, bytes.len()), Ok(entry.clone()));
            prop_assert_eq!(codec.decode_shared(&bytes, bytes.len()), Ok(entry));
        }

        #[test]
        fn shared_and_copying_decodes_agree_on_any_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..1024),
        ) {
            let codec = codec();
            let shared = Bytes::from(bytes.clone());
            prop_assert_eq!(codec.decode_shared(&shared, CAP), codec.decode(&bytes, CAP));
        }

        #[test]
        fn arbitrary_bytes_never_decode(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            prop_assert!(codec().decode(&bytes, CAP).is_err());
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_prefix_never_decode(
            kind in 0u8..4,
            rest in prop::collection::vec(any::<u8>(), 0..1024),
        ) {
            let total = u32::try_from(PREFIX_LEN + rest.len()).unwrap();
            let mut bytes = b"TRCE\x01".to_vec();
            bytes.push(kind);
            bytes.extend_from_slice(&total.to_be_bytes());
            bytes.extend_from_slice(&rest);
            prop_assert!(codec().decode(&bytes, CAP).is_err());
        }

        #[test]
        fn authenticated_garbage_never_panics(
            kind in 1u8..=2,
            payload in prop::collection::vec(any::<u8>(), 0..1024),
        ) {
            let codec = codec();
            let bytes = seal(&codec, kind, &payload);
            // Garbage with a valid MAC may decode or not; it must simply not panic, and whatever
            // decodes must survive another round.
            if let Ok(entry) = codec.decode(&bytes, CAP) {
                let again = codec.encode(&entry);
                prop_assert_eq!(codec.decode(&again, CAP), Ok(entry));
            }
        }

        #[test]
        fn mutated_real_entries_are_rejected_and_never_panic_when_resigned(
            entry in entry(),
            mutations in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let codec = codec();
            let original = codec.encode(&entry).to_vec();
            let mut bytes = original.clone();
            for (index, xor) in &mutations {
                let at = index.index(bytes.len());
                bytes[at] ^= xor;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            // Two mutations of one byte can cancel out; only a changed value must be refused.
            if bytes != original {
                prop_assert!(codec.decode(&bytes, CAP).is_err());
            }
            // Sign the mutated bytes again so the field parser itself sees them: it may accept
            // them or not, but what it accepts must encode and decode to the same value.
            let body_len = bytes.len().saturating_sub(MAC_LEN);
            let resigned = reseal(&codec, &bytes[..body_len]);
            if let Ok(decoded) = codec.decode(&resigned, CAP) {
                let again = codec.encode(&decoded);
                prop_assert_eq!(codec.decode(&again, CAP), Ok(decoded));
            }
        }
    }
}
