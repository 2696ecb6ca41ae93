//! The lean session against pingora's on a generated corpus of requests ([`differential`]):
//! seeds that exercise every framing rule, and mutations of them (a byte replaced by one that
//! matters to HTTP/1 framing, inserted, deleted; a line doubled, dropped or swapped), each
//! checked by [`differential::compare`].

use super::differential::{self, Reading};

/// The seed requests: bodies by length and chunked, extensions, trailers, repeated and
/// conflicting framing fields, HTTP/1.0, absolute form, LF-only lines, pipelined bytes after.
fn seeds() -> Vec<Vec<u8>> {
    [
        &b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET /v2/a/manifests/b HTTP/1.1\r\nHost: a:80\r\nAccept: x, y\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"PUT /v2/a/blobs/uploads/u?digest=sha256:00 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"PUT /v2/a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
        b"PATCH /v2/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n3\r\n!!!\r\n0\r\nT: 1\r\n\r\n",
        b"POST /oauth2/token HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /oauth2/token HTTP/1.0\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        b"GET http://a/v2/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /v2/ HTTP/1.1\nHost: a\nX: y\n\n",
        b"HEAD /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

/// Bytes that matter to HTTP/1 framing.
const SPECIAL: &[u8] = b"\r\n \t:;,=0159afAF\"\x00\x7f\x80-+xX";

/// A small deterministic generator (xorshift64*), so that a failure is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(b.len() + 1);
        let byte = SPECIAL[rng.below(SPECIAL.len())];
        match rng.below(6) {
            0 if at < b.len() => b[at] = byte,
            1 => b.insert(at, byte),
            2 if at < b.len() => {
                b.remove(at);
            }
            3..=5 => {
                // Lines: doubled, dropped or swapped with the next one.
                let lines: Vec<Vec<u8>> = b
                    .split_inclusive(|&c| c == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect();
                if lines.len() > 2 {
                    let i = 1 + rng.below(lines.len() - 2);
                    let mut out = lines.clone();
                    match rng.below(3) {
                        0 => out.insert(i, lines[i].clone()),
                        1 => {
                            out.remove(i);
                        }
                        _ => out.swap(i, i + 1),
                    }
                    b = out.concat();
                }
            }
            _ => b.insert(at.min(b.len()), byte),
        }
    }
    b
}

#[test]
fn the_seeds_read_the_same_in_both_sessions() {
    let rt = differential::runtime().unwrap();
    for s in seeds() {
        differential::compare(&rt, &s).unwrap();
    }
    // Where the lean session accepts, the two readings are the same request (the check is not
    // vacuous: most seeds are accepted by both).
    let accepted = seeds()
        .iter()
        .filter(|s| differential::lean(s) != Reading::Refused)
        .count();
    assert!(accepted >= 7, "{accepted}");
}

#[test]
fn the_lean_session_is_never_looser_than_pingora_on_a_generated_corpus() {
    let rt = differential::runtime().unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let seeds = seeds();
    let (mut both, mut lean_refused) = (0, 0);
    let mut failures = Vec::new();
    for i in 0..20_000 {
        let input = mutate(&seeds[i % seeds.len()], &mut rng);
        if differential::lean(&input) == Reading::Refused {
            lean_refused += 1;
        } else {
            both += 1;
        }
        if let Err(e) = differential::compare(&rt, &input) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements, the first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The corpus reaches both outcomes in numbers.
    assert!(
        both > 2_000 && lean_refused > 2_000,
        "{both} {lean_refused}"
    );
}

/// A lean session for the request `raw` on `conn`.
fn session<T: super::Transport>(conn: Box<super::Conn<T>>, raw: &[u8]) -> super::Lean<T> {
    let mut buf = bytes::BytesMut::from(raw);
    let parsed = match super::head::parse_request(&mut buf) {
        Ok(Some(p)) => p,
        other => panic!("{other:?}"),
    };
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    super::Lean::new(conn, buf, parsed, true, Default::default(), shutdown)
}

/// Blob-cache hits through the lean session are sent by the kernel as through pingora's: over
/// plain TCP a GET's head carries its own connection's file sender (a placeholder write armed
/// through it arrives at the client as the file's bytes); a HEAD's does not, nor does a GET's
/// on another transport.
#[tokio::test]
async fn a_get_over_tcp_carries_its_connections_file_sender() -> std::io::Result<()> {
    use crate::listen::conn::tests::{conn, settings};
    use crate::listen::sendfile::FileSender;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let scratch = crate::testing::Scratch::new("lean-sendfile");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(scratch.join("entry"), &data)?;
    let file = std::sync::Arc::new(std::fs::File::open(scratch.join("entry"))?);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    let (server, peer) = listener.accept().await?;
    let tcp = Box::new(super::Conn::new(server, peer, None, &settings()));

    let mut head = session(
        tcp,
        b"HEAD /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert!(head.req.extensions.get::<FileSender>().is_none());
    let tcp = head.conn.take().unwrap();
    let mut get = session(
        tcp,
        b"GET /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let sender = get.req.extensions.get::<FileSender>().cloned().unwrap();
    let mut tcp = get.conn.take().unwrap();
    {
        let (_armed, placeholder) = sender.arm(&file, 1000, 50_000);
        tcp.write_all(&placeholder).await?;
        tcp.flush().await?;
    }
    drop(tcp);
    let mut got = Vec::new();
    client.read_to_end(&mut got).await?;
    assert!(
        got == data[1000..51_000],
        "the file's span, as the kernel sent it"
    );

    let other = session(
        Box::new(conn(usize::MAX)),
        b"GET /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert!(other.req.extensions.get::<FileSender>().is_none());
    Ok(())
}
