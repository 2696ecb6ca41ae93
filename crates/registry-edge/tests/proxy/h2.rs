//! HTTP/2 limits the edge enforces itself: a stream's request body under the listener's idle
//! deadline (pingora reads it with none), and the cap on concurrent streams per connection.
//! A client written with raw frames, so that it can do what real clients do not.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::h2::{connect_h2, frame, header_block, Tls, PREFACE};
use crate::support::{metrics_text, runtime, sample, start_edge_opts, Edge, EdgeOpts};

/// HEADERS (END_HEADERS) of a PATCH upload with a body still to come.
fn upload_headers(stream: u32, path: &str) -> Vec<u8> {
    let block = header_block(&[
        (":method", "PATCH"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "registry.test"),
        ("content-length", "1000000"),
    ]);
    frame(0x1, 0x4, stream, &block)
}

async fn connect(edge: &Edge) -> Tls {
    connect_h2(&edge.certs.ca, "registry.test", edge.tls).await
}

/// Frames as the server sent them: (type, flags, stream, payload), until the connection ends
/// or `within` passes. Returns them with when the connection ended (`None`: it did not).
async fn read_frames(
    r: &mut tokio::io::ReadHalf<Tls>,
    within: Duration,
) -> (Vec<(u8, u8, u32, Vec<u8>)>, Option<Instant>) {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            frames.push((buf[3], buf[4], stream, buf[9..9 + len].to_vec()));
            buf.drain(..9 + len);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, r.read(&mut chunk)).await {
            Err(_) => return (frames, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (frames, Some(Instant::now())),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Streams that announce a body and never send it are not held open past the listener's idle
/// time (the connection is closed and counted); a body that keeps arriving, slowly, is not
/// cut; and the server advertises and enforces its cap on concurrent streams.
#[test]
fn http2_bodies_have_a_deadline_and_streams_a_cap() {
    let tls_opts =
        "    timeouts: { header_read: 5s, idle: 2s, write: 5s }\n    max_concurrent_streams: 4\n";
    // The registry's read timeout is far longer than the test: only the edge's own body
    // deadline can end the stalled streams in time.
    let edge = start_edge_opts(
        "h2-limits",
        &EdgeOpts {
            tls_opts,
            read_timeout: "60s",
            ..EdgeOpts::default()
        },
    );
    let path = "/v2/team/app/blobs/uploads/u-1?_state=s";
    let series = "registry_edge_http2_body_timeouts_total";
    let before = sample(&metrics_text(edge.admin), series);

    runtime().block_on(async {
        // Four streams open, no DATA at all; a fifth is past the cap.
        let (mut r, mut w) = tokio::io::split(connect(&edge).await);
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for i in 0..5u32 {
            out.extend(upload_headers(1 + 2 * i, path));
        }
        let start = Instant::now();
        w.write_all(&out).await.unwrap();
        w.flush().await.unwrap();
        let (frames, closed) = read_frames(&mut r, Duration::from_secs(15)).await;
        let closed = closed.expect("the edge closes a connection whose bodies stall");
        let after = closed - start;
        assert!(
            after >= Duration::from_millis(1500) && after < Duration::from_secs(15),
            "closed after {after:?}: not the 2 s idle deadline"
        );
        // The server's SETTINGS carry MAX_CONCURRENT_STREAMS (id 3) = 4.
        let settings = frames
            .iter()
            .find(|f| f.0 == 0x4 && f.1 & 1 == 0)
            .expect("server SETTINGS");
        let advertised = settings
            .3
            .chunks(6)
            .find(|s| u16::from_be_bytes([s[0], s[1]]) == 3)
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
        assert_eq!(advertised, Some(4));
        // The fifth stream (id 9) is refused: RST_STREAM with REFUSED_STREAM (7).
        assert!(
            frames
                .iter()
                .any(|f| f.0 == 0x3 && f.2 == 9 && f.3 == 7u32.to_be_bytes()),
            "no REFUSED_STREAM for the fifth stream: {:?}",
            frames.iter().map(|f| (f.0, f.2)).collect::<Vec<_>>()
        );

        // A body that keeps coming, one small DATA frame a second, is not cut at the idle time.
        let (mut r, mut w) = tokio::io::split(connect(&edge).await);
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        out.extend(upload_headers(1, path));
        w.write_all(&out).await.unwrap();
        let reader = tokio::spawn(async move { read_frames(&mut r, Duration::from_secs(6)).await });
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            w.write_all(&frame(0x0, 0, 1, &[b'a'; 100])).await.unwrap();
            w.flush().await.unwrap();
        }
        let (_, closed) = reader.await.unwrap();
        assert!(closed.is_none(), "a body making progress was cut");
    });

    assert_eq!(sample(&metrics_text(edge.admin), series), before + 1.0);
}
