//! Makes grpc C-core clients' `:authority` acceptable to the h2 crate.
//!
//! grpc C-core (Python `grpcio` >= 1.57, so py-spiffe) sends the
//! percent-encoded Unix socket path as the HTTP/2 `:authority`, e.g.
//! `tmp%2Fagent.sock`. h2 rejects any authority containing `%` and resets
//! the stream (hyperium/h2 PR #487, not merged). [`AuthorityFix`] wraps the
//! accepted socket and, in raw (non-Huffman) `:authority` literals of
//! HEADERS frames, rewrites `%` to `-` in place. The length stays the same,
//! so frame lengths and the HPACK dynamic table (which h2 fills with the
//! patched value) stay consistent. The server never looks at the authority.
//!
//! Anything it does not understand (not HTTP/2, CONTINUATION, Huffman
//! values, a malformed block) passes through unchanged.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, UdsConnectInfo};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Larger HEADERS frames pass through unpatched: h2 rejects anything above
/// its max frame size (16 KiB unless configured) anyway.
const MAX_COLLECT: usize = 1 << 20;
/// The collect buffer grows by this much as bytes arrive, so a claimed
/// length alone allocates little.
const GROW: usize = 16 * 1024;

/// An accepted server connection whose client → server HTTP/2 bytes get
/// `%` replaced by `-` in `:authority` values. Writes pass through.
pub struct AuthorityFix<S> {
    inner: S,
    state: State,
    /// A HEADERS payload being collected (`Collect`) or handed out (`Emit`).
    frame: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `n` bytes of the connection preface seen.
    Preface(usize),
    /// `n` bytes of a frame header seen.
    Header([u8; 9], usize),
    /// `n` payload bytes of a frame we don't touch still to come.
    Skip(usize),
    /// Collecting a HEADERS payload of length `len` with these flags;
    /// `filled` bytes of `frame` are real.
    Collect {
        len: usize,
        flags: u8,
        filled: usize,
    },
    /// Handing out `frame[pos..]`; then back to `Header`, or to `Off` after
    /// a premature end of stream.
    Emit { pos: usize, then_off: bool },
    /// Not inspecting any more.
    Off,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            state: State::Preface(0),
            frame: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Advances over bytes just read into the caller's buffer, patching
    /// complete HEADERS frames in place. Returns how many bytes stay there;
    /// the rest (the start of a HEADERS payload that continues in later
    /// reads) moves into `frame`.
    fn scan(&mut self, data: &mut [u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            let rest = data.get_mut(i..).unwrap_or_default();
            match self.state {
                State::Preface(seen) => {
                    let want = PREFACE.get(seen..).unwrap_or_default();
                    let n = want.len().min(rest.len());
                    if rest.get(..n) != want.get(..n) {
                        self.state = State::Off;
                        return data.len();
                    }
                    i += n;
                    self.state = if seen + n == PREFACE.len() {
                        State::Header([0; 9], 0)
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Header(mut hdr, seen) => {
                    let n = (9 - seen).min(rest.len());
                    if let (Some(dst), Some(src)) = (hdr.get_mut(seen..seen + n), rest.get(..n)) {
                        dst.copy_from_slice(src);
                    }
                    i += n;
                    if seen + n < 9 {
                        self.state = State::Header(hdr, seen + n);
                        continue;
                    }
                    let [l0, l1, l2, kind, flags, ..] = hdr;
                    let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                    if kind != HEADERS || flags & END_HEADERS == 0 || len > MAX_COLLECT {
                        self.state = State::Skip(len);
                        continue;
                    }
                    let rest = data.get_mut(i..).unwrap_or_default();
                    if let Some(payload) = rest.get_mut(..len) {
                        patch_headers(payload, flags);
                        i += len;
                        self.state = State::Header([0; 9], 0);
                    } else {
                        self.frame.clear();
                        self.frame.resize(len.min(rest.len() + GROW), 0);
                        if let Some(dst) = self.frame.get_mut(..rest.len()) {
                            dst.copy_from_slice(rest);
                        }
                        self.state = State::Collect {
                            len,
                            flags,
                            filled: rest.len(),
                        };
                        return i;
                    }
                }
                State::Skip(left) => {
                    let n = left.min(rest.len());
                    i += n;
                    self.state = if n == left {
                        State::Header([0; 9], 0)
                    } else {
                        State::Skip(left - n)
                    };
                }
                State::Collect { .. } | State::Emit { .. } | State::Off => return data.len(),
            }
        }
        data.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Emit { pos, then_off } => {
                    let src = this.frame.get(pos..).unwrap_or_default();
                    let n = src.len().min(buf.remaining());
                    buf.put_slice(src.get(..n).unwrap_or_default());
                    this.state = if pos + n < this.frame.len() {
                        State::Emit {
                            pos: pos + n,
                            then_off,
                        }
                    } else if then_off {
                        State::Off
                    } else {
                        State::Header([0; 9], 0)
                    };
                    return Poll::Ready(Ok(()));
                }
                State::Collect { len, flags, filled } => {
                    if filled == this.frame.len() {
                        this.frame.resize(len.min(filled + GROW), 0);
                    }
                    let mut rb = ReadBuf::new(this.frame.get_mut(filled..).unwrap_or_default());
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    if n == 0 {
                        // The peer ended mid-frame: hand over what came.
                        this.frame.truncate(filled);
                        this.state = State::Emit {
                            pos: 0,
                            then_off: true,
                        };
                    } else if filled + n == len {
                        patch_headers(&mut this.frame, flags);
                        this.state = State::Emit {
                            pos: 0,
                            then_off: false,
                        };
                    } else {
                        this.state = State::Collect {
                            len,
                            flags,
                            filled: filled + n,
                        };
                    }
                }
                _ => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    if buf.filled().len() == before {
                        return Poll::Ready(Ok(()));
                    }
                    let new = buf.filled_mut().get_mut(before..).unwrap_or_default();
                    let keep = this.scan(new);
                    buf.set_filled(before + keep);
                    if keep > 0 {
                        return Poll::Ready(Ok(()));
                    }
                    // All of it went into `frame`: read on rather than
                    // return nothing, which would mean end of stream.
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Patches a complete HEADERS payload; leaves it alone unless the whole
/// header block parses.
fn patch_headers(payload: &mut [u8], flags: u8) {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let Some(&pad) = payload.first() else { return };
        start = 1;
        let Some(e) = end.checked_sub(usize::from(pad)) else {
            return;
        };
        end = e;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    let Some(block) = payload.get_mut(start..end) else {
        return;
    };
    let Some(values) = authority_values(block) else {
        return;
    };
    for range in values {
        for b in block.get_mut(range).unwrap_or_default() {
            if *b == b'%' {
                *b = b'-';
            }
        }
    }
}

/// The byte ranges of raw `:authority` literal values in an HPACK block
/// (RFC 7541 §6), or `None` if the block does not parse.
fn authority_values(block: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(&b) = block.get(pos) {
        let prefix = if b & 0x80 != 0 {
            // indexed field
            int(block, &mut pos, 7)?;
            continue;
        } else if b & 0x40 != 0 {
            6 // literal with incremental indexing
        } else if b & 0x20 != 0 {
            // dynamic table size update
            int(block, &mut pos, 5)?;
            continue;
        } else {
            4 // literal without indexing / never indexed
        };
        let name_index = int(block, &mut pos, prefix)?;
        let is_authority = if name_index == 0 {
            let (huffman, name) = string(block, &mut pos)?;
            !huffman && block.get(name) == Some(b":authority".as_slice())
        } else {
            // static table entry 1 is `:authority`
            name_index == 1
        };
        let (huffman, value) = string(block, &mut pos)?;
        if is_authority && !huffman {
            out.push(value);
        }
    }
    Some(out)
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1).
fn int(block: &[u8], pos: &mut usize, n: u32) -> Option<usize> {
    let mask = (1u8 << n) - 1;
    let first = block.get(*pos)? & mask;
    *pos += 1;
    if first < mask {
        return Some(usize::from(first));
    }
    let mut value = usize::from(mask);
    let mut shift = 0;
    loop {
        let b = *block.get(*pos)?;
        *pos += 1;
        // Nothing legitimate needs more than 4 continuation bytes.
        if shift > 21 {
            return None;
        }
        value = value.checked_add(usize::from(b & 0x7f) << shift)?;
        shift += 7;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
}

/// A string literal (RFC 7541 §5.2): whether it is Huffman-coded, and
/// where its bytes are.
fn string(block: &[u8], pos: &mut usize) -> Option<(bool, Range<usize>)> {
    let huffman = block.get(*pos)? & 0x80 != 0;
    let len = int(block, pos, 7)?;
    let start = *pos;
    let end = start.checked_add(len)?;
    if end > block.len() {
        return None;
    }
    *pos = end;
    Some((huffman, start..end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// The first HEADERS block grpcio 1.85 sent to `unix:/tmp/capdir/agent.sock`.
    const CAPTURED: &str = "40053a70617468042f782f79400a3a617574686f7269747919746d702532466361706469722532466167656e742e736f636b8386400c636f6e74656e742d74797065106170706c69636174696f6e2f677270634002746508747261696c6572734014677270632d6163636570742d656e636f64696e67176964656e746974792c206465666c6174652c20677a6970400c677270632d74696d656f757405313031306d400a757365722d6167656e7430677270632d707974686f6e2f312e38352e3120677270632d632f35382e302e3020286c696e75783b2063687474703229";
    const SETTINGS: &[u8] = &[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 0x3, 0, 0, 0, 100];

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn conn(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut c = PREFACE.to_vec();
        c.extend_from_slice(SETTINGS);
        for f in frames {
            c.extend_from_slice(f);
        }
        c
    }

    fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let at = hay
            .windows(from.len())
            .position(|w| w == from)
            .expect("present");
        let mut out = hay.to_vec();
        out[at..at + from.len()].copy_from_slice(to);
        out
    }

    /// Reads `input` through the wrapper, `chunk` bytes per inner read.
    async fn through(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        AuthorityFix::new(Chunks::new(input, chunk))
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    /// A reader that hands out `input` in chunks, one per read, and is
    /// `Pending` before every other one.
    struct Chunks {
        chunks: std::collections::VecDeque<Vec<u8>>,
        stall: bool,
    }

    impl Chunks {
        fn new(input: &[u8], chunk: usize) -> Self {
            Self {
                chunks: input.chunks(chunk).map(<[u8]>::to_vec).collect(),
                stall: false,
            }
        }
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.stall = !self.stall;
            if self.stall {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let Some(mut c) = self.chunks.pop_front() else {
                return Poll::Ready(Ok(()));
            };
            let n = c.len().min(buf.remaining());
            buf.put_slice(&c[..n]);
            if n < c.len() {
                self.chunks.push_front(c.split_off(n));
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn check(input: &[u8], expected: &[u8]) {
        for chunk in [1, 2, 5, 9, 10, 64, 1 << 20] {
            let out = through(input, chunk).await;
            assert_eq!(out.len(), input.len(), "chunk {chunk}");
            assert_eq!(out, expected, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn captured_grpcio_headers_are_patched() {
        let mut block = unhex(CAPTURED);
        // A `%` in another header must survive.
        block.extend_from_slice(b"\x40\x03x-a\x03a%b");
        let input = conn(&[
            frame(HEADERS, END_HEADERS, 1, &block),
            frame(0x0, 0, 1, b"\0\0\0\0\0"),
            // the next request refers to the dynamic table entry
            frame(HEADERS, END_HEADERS, 3, &[0xbe, 0x83, 0x86]),
        ]);
        let expected = replace(
            &input,
            b"tmp%2Fcapdir%2Fagent.sock",
            b"tmp-2Fcapdir-2Fagent.sock",
        );
        assert_eq!(
            expected.iter().filter(|&&b| b == b'%').count(),
            1,
            "only the authority changes"
        );
        check(&input, &expected).await;
    }

    #[tokio::test]
    async fn static_name_index_is_patched() {
        // literal with incremental indexing, name = static entry 1
        let input = conn(&[frame(HEADERS, END_HEADERS, 1, b"\x41\x05a%2Fb\x83")]);
        let expected = replace(&input, b"a%2Fb", b"a-2Fb");
        check(&input, &expected).await;
        // without indexing and never indexed, 4-bit name index
        for first in [0x01, 0x11] {
            let mut block = vec![first];
            block.extend_from_slice(b"\x05a%2Fb");
            let input = conn(&[frame(HEADERS, END_HEADERS | 0x1, 1, &block)]);
            let expected = replace(&input, b"a%2Fb", b"a-2Fb");
            check(&input, &expected).await;
        }
    }

    #[tokio::test]
    async fn huffman_value_is_untouched() {
        let input = conn(&[frame(HEADERS, END_HEADERS, 1, b"\x41\x85a%2Fb")]);
        check(&input, &input).await;
    }

    #[tokio::test]
    async fn other_names_are_untouched() {
        // static entry 4 is :path; a literal name that is not :authority
        let input = conn(&[frame(
            HEADERS,
            END_HEADERS,
            1,
            b"\x44\x03/%a\x40\x0a:authorit_\x02%%",
        )]);
        check(&input, &input).await;
    }

    #[tokio::test]
    async fn padded_and_priority_frames_are_patched() {
        let block = b"\x41\x05a%2Fb";
        let mut padded = vec![3];
        padded.extend_from_slice(block);
        padded.extend_from_slice(b"%%%");
        let mut priority = vec![0x80, 0, 0, 1, 16];
        priority.extend_from_slice(block);
        let mut both = vec![2, 0, 0, 0, 1, 16];
        both.extend_from_slice(block);
        both.extend_from_slice(b"%%");
        for (flags, payload) in [
            (PADDED, padded),
            (PRIORITY, priority),
            (PADDED | PRIORITY, both),
        ] {
            let input = conn(&[frame(HEADERS, END_HEADERS | flags, 1, &payload)]);
            let expected = replace(&input, b"a%2Fb", b"a-2Fb");
            check(&input, &expected).await;
        }
    }

    #[tokio::test]
    async fn malformed_blocks_pass_through() {
        let cases: &[&[u8]] = &[
            // value length runs past the block
            b"\x41\x09a%2Fb",
            // good authority, then a truncated field
            b"\x41\x05a%2Fb\x40\x05x",
            // integer continuation that never ends
            b"\x41\x05a%2Fb\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            // padding longer than the payload
            b"\x41\x05a%2Fb",
        ];
        for (i, block) in cases.iter().enumerate() {
            let flags = if i == 3 {
                END_HEADERS | PADDED
            } else {
                END_HEADERS
            };
            let mut payload = block.to_vec();
            if i == 3 {
                payload.insert(0, 200);
            }
            let input = conn(&[frame(HEADERS, flags, 1, &payload)]);
            check(&input, &input).await;
        }
    }

    #[tokio::test]
    async fn continuation_and_non_h2_pass_through() {
        // HEADERS without END_HEADERS, then CONTINUATION
        let input = conn(&[
            frame(HEADERS, 0, 1, b"\x41\x05a%2Fb"),
            frame(0x9, END_HEADERS, 1, b"\x41\x05a%2Fb"),
        ]);
        check(&input, &input).await;

        let mut not_h2 = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        not_h2.extend_from_slice(&frame(HEADERS, END_HEADERS, 1, b"\x41\x05a%2Fb"));
        check(&not_h2, &not_h2).await;

        // a nearly right preface
        let mut close = PREFACE.to_vec();
        close[23] = b'x';
        close.extend_from_slice(&frame(HEADERS, END_HEADERS, 1, b"\x41\x05a%2Fb"));
        check(&close, &close).await;
    }

    #[tokio::test]
    async fn truncated_stream_hands_over_what_came() {
        let full = conn(&[frame(HEADERS, END_HEADERS, 1, b"\x41\x05a%2Fb\x83\x86")]);
        let cut = &full[..full.len() - 3];
        check(cut, cut).await;
    }

    #[tokio::test]
    async fn large_data_frames_stream_through() {
        let big = vec![b'%'; 100_000];
        let input = conn(&[
            frame(0x0, 0, 1, &big),
            frame(HEADERS, END_HEADERS, 3, b"\x41\x05a%2Fb"),
        ]);
        let expected = replace(&input, b"\x05a%2Fb", b"\x05a-2Fb");
        check(&input, &expected).await;
    }

    #[tokio::test]
    async fn small_caller_buffers_get_everything() {
        let block = unhex(CAPTURED);
        let input = conn(&[frame(HEADERS, END_HEADERS, 1, &block)]);
        let expected = replace(
            &input,
            b"tmp%2Fcapdir%2Fagent.sock",
            b"tmp-2Fcapdir-2Fagent.sock",
        );
        let mut r = AuthorityFix::new(Chunks::new(&input, 7));
        let mut out = Vec::new();
        let mut small = [0u8; 3];
        loop {
            let n = r.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&small[..n]);
        }
        assert_eq!(out, expected);
    }
}
