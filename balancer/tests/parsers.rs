//! The hand-written parsers on the connection path take whatever a client
//! or a pod sends: arbitrary bytes never panic them, and a request split
//! at any byte parses the same as whole.

use proptest::prelude::*;
use wsbalancer::wire::decode_chunked;
use wsbalancer::wire::{FirstRequest, read_first_request};

const UPGRADE: &[u8] = b"GET /ws?room=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// A reader that hands out `data` in the given piece sizes.
struct Pieces {
    data: Vec<u8>,
    sizes: Vec<usize>,
}

impl tokio::io::AsyncRead for Pieces {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let size = if self.sizes.is_empty() {
            self.data.len()
        } else {
            self.sizes.remove(0)
        };
        let n = size.min(self.data.len()).min(buf.remaining()).max(
            // Never report end of stream while data is left.
            usize::from(!self.data.is_empty()),
        );
        let piece: Vec<u8> = self.data.drain(..n).collect();
        buf.put_slice(&piece);
        std::task::Poll::Ready(Ok(()))
    }
}

fn read_all(data: Vec<u8>, sizes: Vec<usize>, max: usize) -> FirstRequest {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(read_first_request(&mut Pieces { data, sizes }, max))
        .unwrap()
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_request_reader(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        sizes in proptest::collection::vec(1usize..512, 0..16),
    ) {
        let _ = read_all(data, sizes, 8192);
    }

    #[test]
    fn an_upgrade_split_anywhere_parses_as_whole(
        sizes in proptest::collection::vec(1usize..64, 0..40),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut data = UPGRADE.to_vec();
        data.extend_from_slice(&tail);
        match read_all(data, sizes, 8192) {
            FirstRequest::Upgrade { head, early } => {
                prop_assert_eq!(head.target(), "/ws?room=1");
                // Whatever followed the head is kept, byte for byte (what
                // was read with it; the rest stays in the socket).
                prop_assert!(tail.starts_with(&early));
            }
            _ => prop_assert!(false, "not parsed as an upgrade"),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_chunked_decoder(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _ = decode_chunked(&data);
    }
}
