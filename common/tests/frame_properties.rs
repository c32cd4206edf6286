//! Property test of the frame tracker: any sequence of valid frames (every
//! length encoding, masked or not, fragmented messages with control frames
//! between the fragments), cut into chunks at arbitrary offsets, yields the
//! same headers, message count and boundary as the frames that were written.

use common::frame::{
    FrameHeader, FrameTracker, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
    encode_frame,
};
use proptest::prelude::*;

/// One generated frame: its header and its bytes.
fn frame() -> impl Strategy<Value = (bool, u8, usize, Option<[u8; 4]>)> {
    let len = prop_oneof![
        0usize..126,
        126usize..1000,
        Just(65535usize),
        65536usize..70000
    ];
    (
        any::<bool>(),
        prop::sample::select(vec![OP_TEXT, OP_BINARY, OP_PING, OP_PONG]),
        len,
        prop::option::of(any::<[u8; 4]>()),
    )
}

/// Makes a valid stream: control frames are final and short, data messages
/// may be fragmented (continuations), a Close may end it.
fn stream(
    frames: &[(bool, u8, usize, Option<[u8; 4]>)],
    close: bool,
) -> (Vec<u8>, Vec<FrameHeader>, u64) {
    let mut bytes = Vec::new();
    let mut headers = Vec::new();
    let mut messages = 0;
    let mut open_message = false;
    for &(fin, op, len, mask) in frames {
        let control = op >= OP_CLOSE;
        let (fin, op, len) = if control {
            (true, op, len.min(125))
        } else if open_message {
            (fin, OP_CONTINUATION, len)
        } else {
            (fin, op, len)
        };
        if !control {
            open_message = !fin;
            if fin {
                messages += 1;
            }
        }
        bytes.extend(encode_frame(fin, op, &vec![0xA5; len], mask));
        headers.push(FrameHeader {
            fin,
            rsv: 0,
            opcode: op,
            masked: mask.is_some(),
            len: len as u64,
        });
    }
    if close {
        bytes.extend(encode_frame(true, OP_CLOSE, &[0x03, 0xE8], None));
        headers.push(FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OP_CLOSE,
            masked: false,
            len: 2,
        });
    }
    (bytes, headers, messages)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn chunked_streams_track_like_whole_ones(
        frames in prop::collection::vec(frame(), 1..12),
        close in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let (bytes, expected, messages) = stream(&frames, close);
        let mut offsets: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        offsets.push(0);
        offsets.push(bytes.len());
        offsets.sort_unstable();
        let mut tracker = FrameTracker::new();
        let mut seen = Vec::new();
        for pair in offsets.windows(2) {
            let chunk = &bytes[pair[0]..pair[1]];
            let used = tracker.feed(chunk, false, |h| seen.push(*h)).unwrap();
            prop_assert_eq!(used, chunk.len());
        }
        prop_assert_eq!(seen, expected);
        prop_assert_eq!(tracker.messages(), messages);
        prop_assert!(tracker.at_boundary());
        prop_assert_eq!(tracker.close_seen(), close);
        prop_assert_eq!(tracker.close_code(), close.then_some(1000));
    }
}
