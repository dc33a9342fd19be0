//! The relay against a fake nameserver on a loopback address of a network
//! namespace the test makes: never the machine's own network.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::network::testutil::in_new_netns;

/// Runs `f` on a single-threaded runtime in a new network namespace, so
/// that every socket of the relay and of the fakes is made there.
fn in_netns<F, Fut>(f: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    in_new_netns(move || {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vsock.sock_1025");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f(socket));
    });
}

/// The fake nameserver's answer to `query` over `transport`: the query
/// with the QR bit set and one byte saying how it came.
fn answer_to(query: &[u8], transport: u8) -> Vec<u8> {
    let mut answer = query.to_vec();
    if let Some(flags) = answer.get_mut(2) {
        *flags |= 0x80;
    }
    answer.push(transport);
    answer
}

/// A query with id `id` (a real one's header is 12 bytes; the fake does
/// not care). One whose body says "silent" gets no answer.
fn query(id: u16, body: &[u8]) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00]);
    q.extend_from_slice(body);
    q
}

/// A nameserver on `ip`:53, UDP and TCP; counts the queries it got.
async fn fake_nameserver(ip: IpAddr) -> Arc<AtomicUsize> {
    let asked = Arc::new(AtomicUsize::new(0));
    let udp = UdpSocket::bind((ip, DNS_PORT)).await.unwrap();
    let count = Arc::clone(&asked);
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_MESSAGE];
        while let Ok((len, from)) = udp.recv_from(&mut buf).await {
            count.fetch_add(1, Ordering::SeqCst);
            let q = &buf[..len];
            if !q.ends_with(b"silent") {
                let _ = udp.send_to(&answer_to(q, b'u'), from).await;
            }
        }
    });
    let tcp = tokio::net::TcpListener::bind((ip, DNS_PORT)).await.unwrap();
    let count = Arc::clone(&asked);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                while let Ok(len) = stream.read_u16().await {
                    let mut q = vec![0u8; len.into()];
                    if stream.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = write_frame(&mut stream, &answer_to(&q, b't')).await;
                }
            });
        }
    });
    asked
}

/// Connects as the guest would and sends `header`.
async fn guest(socket: &Path, header: &[u8]) -> UnixStream {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    stream.write_all(header).await.unwrap();
    stream
}

/// Sends one framed query, reads one framed answer.
async fn ask(stream: &mut UnixStream, q: &[u8]) -> io::Result<Vec<u8>> {
    write_frame(stream, q).await?;
    let len = stream.read_u16().await?;
    let mut answer = vec![0u8; len.into()];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

/// Whether the relay closed `stream` (within a few seconds).
async fn closed(stream: &mut UnixStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        timeout(Duration::from_secs(5), stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn localhost11() -> IpAddr {
    IpAddr::from([127, 0, 0, 11])
}

#[test]
fn udp_and_tcp_queries_reach_the_nameserver_and_answers_come_back() {
    in_netns(|socket| async move {
        let v6 = IpAddr::from(Ipv6Addr::LOCALHOST);
        let asked = fake_nameserver(localhost11()).await;
        let asked_v6 = fake_nameserver(v6).await;
        let relay = DnsRelay::start(&socket, vec![localhost11(), v6]).unwrap();
        assert_eq!(relay.socket(), socket);

        let mut udp = guest(&socket, b"udp 127.0.0.11\n").await;
        for id in [7, 8] {
            let q = query(id, b"example.com");
            assert_eq!(ask(&mut udp, &q).await.unwrap(), answer_to(&q, b'u'));
        }
        let mut tcp = guest(&socket, b"tcp 127.0.0.11\n").await;
        let q = query(9, b"example.org");
        assert_eq!(ask(&mut tcp, &q).await.unwrap(), answer_to(&q, b't'));
        assert_eq!(asked.load(Ordering::SeqCst), 3);

        let mut udp6 = guest(&socket, b"udp ::1\n").await;
        let q = query(10, b"v6");
        assert_eq!(ask(&mut udp6, &q).await.unwrap(), answer_to(&q, b'u'));
        // A message of the largest size the framing carries.
        let mut tcp6 = guest(&socket, b"tcp ::1\n").await;
        let big = query(11, &vec![b'x'; MAX_MESSAGE - 5]);
        let answer = ask(&mut tcp6, &big[..MAX_MESSAGE - 1]).await.unwrap();
        assert_eq!(answer.len(), MAX_MESSAGE);
        assert_eq!(asked_v6.load(Ordering::SeqCst), 2);

        // The guest hanging up ends the connection quietly.
        drop(udp);
        drop(relay);
        assert!(!socket.exists(), "the relay's socket outlived it");
    });
}

#[test]
fn only_the_listed_nameservers_are_ever_asked() {
    in_netns(|socket| async move {
        let other = IpAddr::from([127, 0, 0, 12]);
        let asked = fake_nameserver(other).await;
        let _relay = DnsRelay::start(&socket, vec![localhost11()]).unwrap();
        for header in ["udp 127.0.0.12\n", "tcp 127.0.0.12\n"] {
            let mut stream = guest(&socket, header.as_bytes()).await;
            let _ = write_frame(&mut stream, &query(1, b"x")).await;
            assert!(closed(&mut stream).await, "{header}");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn bad_headers_and_frames_close_only_their_connection() {
    in_netns(|socket| async move {
        let _asked = fake_nameserver(localhost11()).await;
        let _relay = DnsRelay::start(&socket, vec![localhost11()]).unwrap();
        let long = [b'u'; 200];
        let headers: [&[u8]; 9] = [
            b"\n",
            b"udp\n",
            b"dns 127.0.0.11\n",
            b"udp 127.0.0.11 x\n",
            b"udp  127.0.0.11\n",
            b"UDP 127.0.0.11\n",
            b"udp 127.0.0.11\0\n",
            b"\xff\xfe\xfd 127.0.0.11\n",
            &long,
        ];
        for header in headers {
            let mut stream = guest(&socket, header).await;
            assert!(closed(&mut stream).await, "{header:?}");
        }
        // A header cut short by the guest's hang-up.
        let mut stream = guest(&socket, b"udp 127.0").await;
        stream.shutdown().await.unwrap();
        assert!(closed(&mut stream).await);
        // An empty message.
        let mut stream = guest(&socket, b"udp 127.0.0.11\n\0\0").await;
        assert!(closed(&mut stream).await);
        // A frame that promises more than it sends, then hangs up.
        let mut stream = guest(&socket, b"tcp 127.0.0.11\n\xff\xffabc").await;
        stream.shutdown().await.unwrap();
        assert!(closed(&mut stream).await);

        // The relay still serves.
        let mut good = guest(&socket, b"udp 127.0.0.11\n").await;
        let q = query(3, b"still");
        assert_eq!(ask(&mut good, &q).await.unwrap(), answer_to(&q, b'u'));
    });
}

#[test]
fn a_nameserver_that_does_not_answer_ends_the_connection_at_the_deadline() {
    in_netns(|socket| async move {
        let _asked = fake_nameserver(localhost11()).await;
        let limits = Limits {
            answer: Duration::from_millis(300),
            ..Limits::default()
        };
        let _relay = DnsRelay::start_with(&socket, vec![localhost11()], limits).unwrap();
        let mut stream = guest(&socket, b"udp 127.0.0.11\n").await;
        write_frame(&mut stream, &query(4, b"silent"))
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        assert!(closed(&mut stream).await);
        assert!(started.elapsed() < Duration::from_secs(3));
        // A guest that connects and says nothing is closed too.
        let mut mute = UnixStream::connect(&socket).await.unwrap();
        assert!(closed(&mut mute).await);
    });
}

#[test]
fn connections_beyond_the_limit_are_closed_and_a_freed_slot_serves_again() {
    in_netns(|socket| async move {
        let _asked = fake_nameserver(localhost11()).await;
        let _relay = DnsRelay::start(&socket, vec![localhost11()]).unwrap();
        // Every slot taken by a guest that has not sent its header yet.
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(UnixStream::connect(&socket).await.unwrap());
        }
        let mut extra = guest(&socket, b"udp 127.0.0.11\n").await;
        assert!(closed(&mut extra).await);

        drop(held.pop());
        // The freed slot is given back once its task has ended.
        let mut served = false;
        for _ in 0..50 {
            let mut stream = guest(&socket, b"udp 127.0.0.11\n").await;
            let q = query(5, b"again");
            if let Ok(Ok(answer)) = timeout(Duration::from_secs(1), ask(&mut stream, &q)).await {
                assert_eq!(answer, answer_to(&q, b'u'));
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "no slot came free");
    });
}
