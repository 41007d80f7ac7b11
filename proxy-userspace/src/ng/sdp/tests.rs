use super::*;

const OFFER: &str = "v=0\r\n\
o=- 1545997027 1 IN IP4 198.51.101.40\r\n\
s=tester\r\n\
c=IN IP4 198.51.100.1\r\n\
t=0 0\r\n\
m=audio 3000 RTP/AVP 0 8 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=x-unknown:keep me\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
m=video 3002 RTP/AVP 96\r\n\
c=IN IP4 198.51.100.2\r\n\
a=rtpmap:96 H264/90000\r\n\
a=rtcp:4000 IN IP4 198.51.100.3\r\n";

fn rw(addr: &str) -> Rewrite {
    Rewrite {
        addr: addr.parse().unwrap(),
        media: vec![
            MediaRewrite {
                rtp_port: 30000,
                rtcp_port: 30001,
                rtcp_mux: false,
            },
            MediaRewrite {
                rtp_port: 30002,
                rtcp_port: 30003,
                rtcp_mux: false,
            },
        ],
        replace_origin: false,
        replace_session_connection: false,
        replace_zero_address: false,
        remove_ice: false,
        rtcp_attr: RtcpAttrMode::Keep,
    }
}

#[test]
fn reads_media_and_addresses() {
    let s = parse(OFFER.as_bytes()).unwrap();
    assert_eq!(s.media.len(), 2);
    let a = &s.media[0];
    assert_eq!(
        (a.kind.as_str(), a.port, a.proto.as_str()),
        ("audio", 3000, "RTP/AVP")
    );
    assert_eq!(a.addr.to_string(), "198.51.100.1");
    assert_eq!(a.rtcp_endpoint().to_string(), "198.51.100.1:3001");
    assert_eq!(a.codec.as_deref(), Some("PCMU/8000"));
    assert_eq!(a.direction.as_deref(), Some("sendrecv"));
    let v = &s.media[1];
    assert_eq!(v.addr.to_string(), "198.51.100.2");
    assert_eq!(v.rtcp_endpoint().to_string(), "198.51.100.3:4000");
    assert_eq!(v.codec.as_deref(), Some("H264/90000"));
    assert_eq!(s.origin_addr, Some("198.51.101.40".parse().unwrap()));
}

#[test]
fn rewrites_only_what_points_at_media() {
    let s = parse(OFFER.as_bytes()).unwrap();
    let out = String::from_utf8(rewrite(&s, &rw("203.0.113.1"))).unwrap();
    let expected = OFFER
        .replace("c=IN IP4 198.51.100.1", "c=IN IP4 203.0.113.1")
        .replace("m=audio 3000", "m=audio 30000")
        .replace("m=video 3002", "m=video 30002")
        .replace("c=IN IP4 198.51.100.2", "c=IN IP4 203.0.113.1")
        .replace(
            "a=rtcp:4000 IN IP4 198.51.100.3",
            "a=rtcp:30003 IN IP4 203.0.113.1",
        );
    assert_eq!(out, expected);
}

#[test]
fn origin_ice_rtcp_mux_and_v6() {
    let body = "v=0\no=alice 1 2 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\na=ice-lite\nm=audio 5004 RTP/AVP 8\na=ice-ufrag:abc\na=candidate:1 1 UDP 1 10.0.0.1 5004 typ host\na=rtcp:5005\na=end-of-candidates\n";
    let s = parse(body.as_bytes()).unwrap();
    assert!(s.media[0].ice);
    let mut r = rw("2001:db8::1");
    r.media.truncate(1);
    r.media[0].rtcp_mux = true;
    r.replace_origin = true;
    r.remove_ice = true;
    let out = String::from_utf8(rewrite(&s, &r)).unwrap();
    assert_eq!(
        out,
        "v=0\no=alice 1 2 IN IP6 2001:db8::1\ns=-\nc=IN IP6 2001:db8::1\nt=0 0\nm=audio 30000 RTP/AVP 8\na=rtcp:30000\na=rtcp-mux\n"
    );
}

#[test]
fn hold_and_disabled_streams_are_left_alone() {
    let body = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n";
    let s = parse(body.as_bytes()).unwrap();
    assert!(s.media[0].is_held());
    assert!(s.media[1].is_disabled());
    let out = String::from_utf8(rewrite(&s, &rw("203.0.113.1"))).unwrap();
    assert_eq!(out, body.replace("m=audio 4000", "m=audio 30000"));
}

#[test]
fn full_and_omitted_rtcp_attributes() {
    let body = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:4001\r\n";
    let s = parse(body.as_bytes()).unwrap();
    let mut r = rw("203.0.113.1");
    r.media.truncate(1);
    r.rtcp_attr = RtcpAttrMode::Full;
    let out = String::from_utf8(rewrite(&s, &r)).unwrap();
    assert!(
        out.ends_with("a=rtcp:30001 IN IP4 203.0.113.1\r\n"),
        "{out}"
    );
    r.rtcp_attr = RtcpAttrMode::Omit;
    let out = String::from_utf8(rewrite(&s, &r)).unwrap();
    assert!(!out.contains("a=rtcp"), "{out}");
    // Full on a section without a=rtcp adds one, keeping the body's unterminated end.
    let s2 = parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0").unwrap();
    r.rtcp_attr = RtcpAttrMode::Full;
    let out = String::from_utf8(rewrite(&s2, &r)).unwrap();
    assert_eq!(
        out,
        "v=0\r\nc=IN IP4 203.0.113.1\r\nm=audio 30000 RTP/AVP 0\r\na=rtcp:30001 IN IP4 203.0.113.1"
    );
}

#[test]
fn malformed_bodies_are_errors() {
    assert_eq!(parse(b"").unwrap_err(), SdpError::NoVersion);
    assert_eq!(parse(b"v=1\r\n").unwrap_err(), SdpError::NoVersion);
    assert_eq!(
        parse(b"v=0\r\nnonsense\r\n").unwrap_err(),
        SdpError::BadLine(2)
    );
    assert_eq!(
        parse(b"v=0\r\nm=audio 4000 RTP/AVP \r \n").unwrap_err(),
        SdpError::BadLine(2)
    );
    assert_eq!(
        parse(b"v=0\r\nm=audio x RTP/AVP 0\r\n").unwrap_err(),
        SdpError::BadMediaLine(2)
    );
    assert_eq!(
        parse(b"v=0\r\nc=IN IP4 999.1.1.1\r\n").unwrap_err(),
        SdpError::BadConnectionLine(2)
    );
    assert_eq!(
        parse(b"v=0\r\nc=IN IP6 1.2.3.4\r\n").unwrap_err(),
        SdpError::BadConnectionLine(2)
    );
    assert_eq!(
        parse(b"v=0\r\nm=audio 4 RTP/AVP 0\r\n").unwrap_err(),
        SdpError::NoConnection(0)
    );
}

#[test]
fn non_utf8_lines_survive() {
    let mut body = b"v=0\r\ns=".to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(b"\r\nc=IN IP4 1.1.1.1\r\nm=audio 5 RTP/AVP 0\r\n");
    let s = parse(&body).unwrap();
    let mut r = rw("2.2.2.2");
    r.media.truncate(1);
    let out = rewrite(&s, &r);
    assert!(out.windows(2).any(|w| w == [0xff, 0xfe]));
}
