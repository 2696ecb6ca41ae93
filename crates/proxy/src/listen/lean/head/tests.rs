use super::*;

fn parse(raw: &str) -> Result<Option<Parsed>, Refused> {
    let mut buf = BytesMut::from(raw.as_bytes());
    parse_request(&mut buf)
}

fn framing_of(raw: &str) -> Result<Framing, Refused> {
    parse(raw).map(|p| p.map_or(Framing::Empty, |p| p.framing))
}

fn refused(raw: &str) -> bool {
    parse(raw).is_err()
}

#[test]
fn a_whole_head_is_taken_off_the_buffer_and_the_rest_stays() {
    let mut buf = BytesMut::from(&b"GET /v2/ HTTP/1.1\r\nHost: a\r\nX-Y: z\r\n\r\nNEXT"[..]);
    let p = parse_request(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..], b"NEXT");
    assert_eq!(p.header.method, http::Method::GET);
    assert_eq!(p.header.raw_path(), b"/v2/");
    assert_eq!(p.header.headers["x-y"], "z");
    assert_eq!(p.framing, Framing::Empty);
    assert!(p.keepalive);
    assert_eq!(
        &p.raw[..],
        b"GET /v2/ HTTP/1.1\r\nHost: a\r\nX-Y: z\r\n\r\n"
    );
}

#[test]
fn a_head_cut_anywhere_asks_for_more() {
    let raw = "PUT /v2/a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
    for cut in 0..raw.len() {
        assert!(matches!(parse(&raw[..cut]), Ok(None)), "cut at {cut}");
    }
    assert_eq!(framing_of(raw), Ok(Framing::Length(3)));
}

#[test]
fn content_length_rules() {
    let with = |cl: &str| framing_of(&format!("PUT / HTTP/1.1\r\nHost: a\r\n{cl}\r\n"));
    assert_eq!(with("Content-Length: 0\r\n"), Ok(Framing::Empty));
    assert_eq!(with("Content-Length: 12\r\n"), Ok(Framing::Length(12)));
    assert_eq!(
        with("Content-Length: 5\r\nContent-Length: 5\r\n"),
        Ok(Framing::Length(5))
    );
    assert_eq!(with("Content-Length: 5, 5\r\n"), Ok(Framing::Length(5)));
    for bad in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: \r\n",
        "Content-Length: 5,\r\n",
        "Content-Length: 99999999999999999999\r\n",
    ] {
        assert!(with(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn transfer_encoding_rules() {
    let with = |v: &str, te: &str| framing_of(&format!("PUT / HTTP/{v}\r\nHost: a\r\n{te}\r\n"));
    assert_eq!(
        with("1.1", "Transfer-Encoding: chunked\r\n"),
        Ok(Framing::Chunked)
    );
    assert_eq!(
        with("1.1", "Transfer-Encoding: CHUNKED\r\n"),
        Ok(Framing::Chunked)
    );
    for bad in [
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding: \r\n",
    ] {
        assert!(with("1.1", bad).is_err(), "{bad:?}");
    }
    assert!(with("1.0", "Transfer-Encoding: chunked\r\n").is_err());
}

#[test]
fn malformed_heads_are_refused() {
    for bad in [
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nX",
    ] {
        // (The last: httparse skips empty lines before a request line, as RFC 9112 §2.2 allows;
        // it is accepted, and is here to show that it is not refused by accident.)
        if bad.starts_with("\r\n") {
            assert!(parse(bad).unwrap().is_some());
        } else {
            assert!(refused(bad), "{bad:?}");
        }
    }
    let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
    assert!(refused(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")));
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "a".repeat(MAX_HEAD));
    assert!(refused(&big));
}

#[test]
fn lf_line_endings_and_http10_are_read() {
    let p = parse("GET / HTTP/1.1\nHost: a\n\n").unwrap().unwrap();
    assert_eq!(p.header.headers["host"], "a");
    let p = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!p.keepalive);
    let p = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(p.keepalive);
    let p = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: x, close\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!p.keepalive);
}

/// Decodes a whole chunked body from `raw`, fed `step` bytes at a time.
fn dechunk(raw: &[u8], step: usize) -> Result<(Vec<u8>, usize), Refused> {
    let mut state = Chunked::Size;
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut out = Vec::new();
    loop {
        match state.step(&mut buf, 3)? {
            Step::Data(d) => out.extend_from_slice(&d),
            Step::Framing => {}
            Step::End => return Ok((out, buf.len() + raw.len() - fed)),
            Step::More => {
                if fed == raw.len() {
                    return Err(Refused("ended early"));
                }
                let n = step.min(raw.len() - fed);
                buf.extend_from_slice(&raw[fed..fed + n]);
                fed += n;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_however_they_arrive() {
    let raw = b"5;a=b\r\nhello\r\n1 ; x=\"y\"\r\n!\r\n0\r\nT: 1\r\n\r\nNEXT";
    for step in 1..raw.len() {
        let (body, left) = dechunk(raw, step).unwrap();
        assert_eq!(body, b"hello!", "step {step}");
        assert_eq!(left, 4, "step {step}");
    }
    assert_eq!(dechunk(b"0\r\n\r\n", 1).unwrap().0, b"");
}

#[test]
fn bad_chunk_framing_is_refused() {
    for bad in [
        &b"5\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"x\r\n",
        b"\r\n",
        b"-5\r\n",
        b"10000000000000005\r\nhello\r\n0\r\n\r\n",
        b"5 5\r\nhello\r\n0\r\n\r\n",
        b"5;a\x01\r\nhello\r\n0\r\n\r\n",
        b"0\r\nX : y\r\n\r\n",
        // Found by the differential corpus: httparse ends a trailer section at a bare LF.
        b"0\r\n\n",
        b"0\r\nT: 1\n\r\n",
    ] {
        assert!(
            dechunk(bad, 64).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long = format!("5;{}\r\n", "a".repeat(MAX_CHUNK_LINE));
    assert!(dechunk(long.as_bytes(), 64).is_err());
}
