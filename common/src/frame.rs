//! WebSocket frame boundaries in a relayed byte stream (RFC 6455 §5.2).
//!
//! The relay moves bytes unchanged; this tracker only reads frame headers
//! as they pass, so the relay knows where each frame starts (to count
//! messages, and to insert its own Close frame between two frames, never
//! inside one) and whether a side already sent its Close. Payloads are never
//! copied or unmasked, with one exception: the first two payload bytes of a
//! Close frame, its close code, which the relay reports in its metrics and
//! logs. Pure and incremental: bytes may arrive split at any offset.

/// Continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last frame of its message.
    pub fin: bool,
    /// RSV1-3 bits (RSV1 marks a compressed message with permessage-deflate).
    pub rsv: u8,
    /// Opcode (see the `OP_*` constants).
    pub opcode: u8,
    /// Whether the payload is masked (client to server frames are).
    pub masked: bool,
    /// Payload length.
    pub len: u64,
}

impl FrameHeader {
    /// Whether this is a control frame (close, ping, pong).
    pub fn is_control(&self) -> bool {
        self.opcode >= OP_CLOSE
    }
}

/// A byte stream that is not a sequence of WebSocket frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Opcodes 3-7 and 0xB-0xF are reserved.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// Control frames carry at most 125 bytes.
    #[error("control frame of {0} bytes")]
    ControlTooLong(u64),
    /// Control frames cannot be fragmented.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A 64-bit length must have its top bit clear.
    #[error("payload length out of range")]
    LengthOverflow,
}

/// Follows frame boundaries in one direction of a WebSocket connection.
#[derive(Debug, Clone, Default)]
pub struct FrameTracker {
    /// Bytes of the current frame's header received so far. Once complete,
    /// it stays here while the frame's payload passes (the close code is
    /// unmasked with the key at its end).
    header: [u8; MAX_HEADER],
    /// How many of `header` are filled (at most [`MAX_HEADER`]).
    have: u8,
    /// Payload bytes still to pass before the next header.
    remaining: u64,
    /// Complete data messages seen (final data or continuation frames).
    messages: u64,
    /// Whether a Close frame has passed completely.
    close_seen: bool,
    /// Header of the frame whose payload is passing.
    current: Option<FrameHeader>,
    /// The first Close frame's code, once that frame has passed whole.
    close_code: Option<u16>,
    /// Code bytes of the first Close frame, unmasked as they pass.
    code_bytes: [u8; 2],
    /// Code bytes the passing frame still carries: 2 at the start of the
    /// first Close frame with a payload, 0 for every other frame.
    code_wanted: u8,
}

/// Header length given its first two bytes.
fn header_len(b0: u8, b1: u8) -> usize {
    let _ = b0;
    let extended = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

fn parse_header(h: &[u8]) -> Result<FrameHeader, FrameError> {
    let fin = h[0] & 0x80 != 0;
    let rsv = (h[0] >> 4) & 0x07;
    let opcode = h[0] & 0x0F;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(FrameError::LengthOverflow);
            }
            len
        }
        short => u64::from(short),
    };
    if matches!(opcode, 0x3..=0x7 | 0xB..=0xF) {
        return Err(FrameError::ReservedOpcode(opcode));
    }
    let header = FrameHeader {
        fin,
        rsv,
        opcode,
        masked,
        len,
    };
    if header.is_control() {
        if len > 125 {
            return Err(FrameError::ControlTooLong(len));
        }
        if !fin {
            return Err(FrameError::FragmentedControl);
        }
    }
    Ok(header)
}

impl FrameTracker {
    /// A tracker at the start of a stream.
    pub fn new() -> Self {
        FrameTracker::default()
    }

    /// True between two frames: a frame of the relay's own may go here.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Complete data messages seen so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Whether this side has sent a complete Close frame.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// The status code of the first Close frame, once it has passed whole;
    /// `None` before that, and for a Close frame without a code (an empty
    /// payload, which RFC 6455 §7.1.5 reports as 1005 "no status").
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// A frame has passed whole: count it.
    fn frame_done(&mut self) {
        if let Some(header) = self.current.take() {
            if header.fin && !header.is_control() {
                self.messages += 1;
            }
            if header.opcode == OP_CLOSE && !self.close_seen {
                self.close_seen = true;
                // No payload is no code; one byte is malformed: no code either.
                self.close_code = (header.len >= 2).then(|| u16::from_be_bytes(self.code_bytes));
            }
        }
    }

    /// Takes the close code's bytes from the start of a Close payload;
    /// `payload` starts at the first code byte still wanted.
    fn take_code(&mut self, payload: &[u8]) {
        // The mask key ends the header, still in place while the payload
        // passes; an unmasked frame is XORed with zeros.
        let key = match self.header[1] & 0x80 {
            0 => [0; 4],
            _ => {
                let end = header_len(self.header[0], self.header[1]);
                [self.header[end - 4], self.header[end - 3], 0, 0]
            }
        };
        for &byte in payload.iter().take(usize::from(self.code_wanted)) {
            let at = 2 - usize::from(self.code_wanted);
            self.code_bytes[at] = byte ^ key[at];
            self.code_wanted -= 1;
        }
    }

    /// Follows `bytes`, calling `on_frame` with each frame's header as soon
    /// as the header is complete. Returns how many bytes were consumed: all
    /// of them, unless `stop_at_boundary` is set and a frame ended before the
    /// end of `bytes`, in which case it stops right after that frame.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        stop_at_boundary: bool,
        mut on_frame: impl FnMut(&FrameHeader),
    ) -> Result<usize, FrameError> {
        let mut i = 0;
        while i < bytes.len() {
            if self.remaining > 0 {
                let available = (bytes.len() - i) as u64;
                let take = self.remaining.min(available);
                if self.code_wanted > 0 {
                    // Never more than `remaining`: the frame carries both.
                    self.take_code(&bytes[i..]);
                }
                i += take as usize;
                self.remaining -= take;
                if self.remaining == 0 {
                    self.frame_done();
                    if stop_at_boundary {
                        return Ok(i);
                    }
                }
                continue;
            }
            self.header[usize::from(self.have)] = bytes[i];
            self.have += 1;
            i += 1;
            let have = usize::from(self.have);
            if have < 2 || have < header_len(self.header[0], self.header[1]) {
                continue;
            }
            let parsed = parse_header(&self.header[..have]);
            self.have = 0;
            let header = parsed?;
            // The first Close frame with a payload: read its code as it passes.
            if header.opcode == OP_CLOSE && !self.close_seen && header.len >= 2 {
                self.code_wanted = 2;
            }
            on_frame(&header);
            self.current = Some(header);
            self.remaining = header.len;
            if self.remaining == 0 {
                self.frame_done();
                if stop_at_boundary {
                    return Ok(i);
                }
            }
        }
        Ok(i)
    }
}

/// A Close frame with `code` and `reason` (cut to fit 125 bytes), masked
/// with `mask` when it goes toward a server.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    let mut frame = vec![0x80 | OP_CLOSE, payload.len() as u8];
    if let Some(key) = mask {
        frame[1] |= 0x80;
        frame.extend_from_slice(&key);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    frame.extend_from_slice(&payload);
    frame
}

/// Serializes one frame (for tests and fuzzing): header plus payload, the
/// payload masked with `mask` when given.
pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (opcode & 0x0F)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(stream: &[u8]) -> (Vec<FrameHeader>, FrameTracker) {
        let mut t = FrameTracker::new();
        let mut seen = Vec::new();
        assert_eq!(
            t.feed(stream, false, |h| seen.push(*h)).unwrap(),
            stream.len()
        );
        (seen, t)
    }

    #[test]
    fn every_length_encoding_and_mask() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let payload = vec![9u8; len];
                let (seen, t) = headers_of(&encode_frame(true, OP_BINARY, &payload, mask));
                assert_eq!(seen.len(), 1);
                assert_eq!(seen[0].len, len as u64);
                assert_eq!(seen[0].masked, mask.is_some());
                assert!(t.at_boundary());
                assert_eq!(t.messages(), 1);
            }
        }
    }

    #[test]
    fn fragments_with_interleaved_control_frames_count_one_message() {
        let mut s = encode_frame(false, OP_TEXT, b"frag", None);
        s.extend(encode_frame(true, OP_PING, b"p", None));
        s.extend(encode_frame(false, OP_CONTINUATION, b"ment", None));
        s.extend(encode_frame(true, OP_PONG, b"", None));
        s.extend(encode_frame(true, OP_CONTINUATION, b"ed", None));
        let (seen, t) = headers_of(&s);
        assert_eq!(seen.len(), 5);
        assert_eq!(t.messages(), 1);
        assert!(!t.close_seen());
    }

    #[test]
    fn split_at_every_offset_gives_the_same_frames() {
        let mut s = encode_frame(true, OP_TEXT, b"hello", Some([9, 8, 7, 6]));
        s.extend(encode_frame(true, OP_BINARY, &[1u8; 300], None));
        s.extend(close_frame(1000, "bye", Some([1, 1, 1, 1])));
        let (whole, _) = headers_of(&s);
        for cut in 0..=s.len() {
            let mut t = FrameTracker::new();
            let mut seen = Vec::new();
            t.feed(&s[..cut], false, |h| seen.push(*h)).unwrap();
            t.feed(&s[cut..], false, |h| seen.push(*h)).unwrap();
            assert_eq!(seen, whole, "cut at {cut}");
            assert!(t.at_boundary());
            assert!(t.close_seen());
            assert_eq!(t.messages(), 2);
        }
    }

    #[test]
    fn a_half_frame_is_not_counted_yet() {
        let frame = encode_frame(true, OP_TEXT, b"hello", None);
        let mut t = FrameTracker::new();
        t.feed(&frame[..4], false, |_| {}).unwrap();
        assert_eq!(t.messages(), 0);
        t.feed(&frame[4..], false, |_| {}).unwrap();
        assert_eq!(t.messages(), 1);
    }

    #[test]
    fn stops_right_after_a_frame_when_asked() {
        let a = encode_frame(true, OP_TEXT, b"abc", None);
        let mut s = a.clone();
        s.extend(encode_frame(true, OP_TEXT, b"def", None));
        let mut t = FrameTracker::new();
        assert_eq!(t.feed(&s, true, |_| {}).unwrap(), a.len());
        assert!(t.at_boundary());
    }

    #[test]
    fn rejects_what_is_not_websocket() {
        let mut t = FrameTracker::new();
        assert_eq!(
            t.feed(&[0x83, 0x00], false, |_| {}),
            Err(FrameError::ReservedOpcode(3))
        );
        let mut t = FrameTracker::new();
        assert_eq!(
            t.feed(&encode_frame(false, OP_PING, b"", None), false, |_| {}),
            Err(FrameError::FragmentedControl)
        );
        let mut t = FrameTracker::new();
        assert_eq!(
            t.feed(
                &encode_frame(true, OP_CLOSE, &[0; 126], None),
                false,
                |_| {}
            ),
            Err(FrameError::ControlTooLong(126))
        );
        let mut t = FrameTracker::new();
        let mut big = vec![0x82, 127];
        big.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(t.feed(&big, false, |_| {}), Err(FrameError::LengthOverflow));
    }

    #[test]
    fn close_frame_is_well_formed_and_masked_toward_servers() {
        let unmasked = close_frame(1001, "going away", None);
        assert_eq!(&unmasked[..4], &[0x88, 12, 0x03, 0xE9]);
        let masked = close_frame(1012, "restart", Some([0xFF, 0, 0xFF, 0]));
        let (seen, t) = headers_of(&masked);
        assert!(seen[0].masked && seen[0].opcode == OP_CLOSE && seen[0].len == 9);
        assert!(t.close_seen());
        assert_eq!(masked[6] ^ 0xFF, 0x03);
        assert_eq!(close_frame(1000, &"é".repeat(100), None).len(), 2 + 2 + 122);
    }

    #[test]
    fn close_code_of_an_unmasked_close() {
        let (_, t) = headers_of(&close_frame(4001, "bye", None));
        assert_eq!(t.close_code(), Some(4001));
    }

    #[test]
    fn close_code_of_a_masked_close_is_unmasked() {
        // A key that changes both code bytes, and differs between them.
        let frame = close_frame(1000, "done", Some([0xA5, 0x3C, 0x0F, 0xF0]));
        assert_ne!(&frame[6..8], &1000u16.to_be_bytes(), "the code is masked");
        let (_, t) = headers_of(&frame);
        assert_eq!(t.close_code(), Some(1000));
    }

    #[test]
    fn close_code_split_across_feeds_at_every_offset() {
        let mut s = encode_frame(true, OP_TEXT, b"before", Some([1, 2, 3, 4]));
        s.extend(close_frame(3003, "split", Some([0x11, 0x22, 0x33, 0x44])));
        for cut in 0..=s.len() {
            for second in cut..=s.len() {
                let mut t = FrameTracker::new();
                for piece in [&s[..cut], &s[cut..second], &s[second..]] {
                    t.feed(piece, false, |_| {}).unwrap();
                }
                assert_eq!(t.close_code(), Some(3003), "cuts at {cut} and {second}");
            }
        }
    }

    #[test]
    fn a_close_without_code_has_none() {
        for mask in [None, Some([7, 7, 7, 7])] {
            let (_, t) = headers_of(&encode_frame(true, OP_CLOSE, b"", mask));
            assert!(t.close_seen());
            assert_eq!(t.close_code(), None);
            // One byte is malformed: no code either.
            let (_, t) = headers_of(&encode_frame(true, OP_CLOSE, &[3], mask));
            assert!(t.close_seen());
            assert_eq!(t.close_code(), None);
        }
    }

    #[test]
    fn only_the_first_close_counts_and_only_once_whole() {
        let first = close_frame(1001, "", None);
        let mut t = FrameTracker::new();
        t.feed(&first[..3], false, |_| {}).unwrap();
        assert_eq!(t.close_code(), None, "not before the frame has passed");
        t.feed(&first[3..], false, |_| {}).unwrap();
        assert_eq!(t.close_code(), Some(1001));
        t.feed(&close_frame(1011, "again", None), false, |_| {})
            .unwrap();
        assert_eq!(t.close_code(), Some(1001));
        // Pings carry payloads too; they are no close codes.
        let mut t = FrameTracker::new();
        t.feed(
            &encode_frame(true, OP_PING, &[0x0F, 0xA0], None),
            false,
            |_| {},
        )
        .unwrap();
        assert_eq!(t.close_code(), None);
    }
}
