//! Fetching through the SSRF guard against real sockets on 127.0.0.1 (§8 items 23–27):
//! refused literals never connect; allowed local fetches work, redirects are followed by hand
//! and re-checked, bodies are capped while streaming, timeouts bind, proxies are ignored.

mod image_io_util;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use editd::image_io::{decode_image, DecodeLimits, FetchPolicy, Fetcher, HostResolver};
use image::{DynamicImage, ImageFormat};
use image_io_util::{encode, gradient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A listener that only counts connections (and never answers).
struct Recorder {
    port: u16,
    conns: Arc<AtomicUsize>,
}

async fn recorder(ip: &str) -> Recorder {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    Recorder { port, conns }
}

#[derive(Clone)]
enum Reply {
    Ok(Vec<u8>),
    Status(u16, &'static str),
    Redirect(String),
    /// Headers as given, then an endless body; counts bytes written.
    Endless(&'static str, Arc<AtomicUsize>),
    /// Accept, read the request, never answer.
    Hang,
}

/// A tiny HTTP/1.1 server: `route(path) -> Reply`; counts requests.
struct Server {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

async fn server(route: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let (route, reqs) = (Arc::new(route), requests.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (route, reqs) = (route.clone(), reqs.clone());
            tokio::spawn(async move {
                let _ = serve(s, &*route, &reqs).await;
            });
        }
    });
    Server { addr, requests }
}

async fn serve(
    mut s: TcpStream,
    route: &(dyn Fn(&str) -> Reply + Send + Sync),
    reqs: &AtomicUsize,
) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    reqs.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    match route(&path) {
        Reply::Ok(body) => {
            let h = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            s.write_all(h.as_bytes()).await?;
            s.write_all(&body).await?;
        }
        Reply::Status(code, body) => {
            let h = format!(
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(h.as_bytes()).await?;
        }
        Reply::Redirect(loc) => {
            let h = format!("HTTP/1.1 302 Found\r\nLocation: {loc}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            s.write_all(h.as_bytes()).await?;
        }
        Reply::Endless(headers, sent) => {
            s.write_all(
                format!("HTTP/1.1 200 OK\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
            )
            .await?;
            let chunked = headers.contains("chunked");
            let mut block = b"\x89PNG\r\n\x1a\n".to_vec();
            block.resize(64 * 1024, 0xab);
            let framed = if chunked {
                let mut f = format!("{:x}\r\n", block.len()).into_bytes();
                f.extend_from_slice(&block);
                f.extend_from_slice(b"\r\n");
                f
            } else {
                block
            };
            loop {
                s.write_all(&framed).await?;
                sent.fetch_add(framed.len(), Ordering::SeqCst);
                if sent.load(Ordering::SeqCst) > (1 << 30) {
                    return Ok(()); // 1 GiB: the client never stopped us
                }
            }
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
    let _ = s.shutdown().await;
    Ok(())
}

fn png() -> Vec<u8> {
    encode(&DynamicImage::ImageRgb8(gradient(16, 9)), ImageFormat::Png)
}

fn lan() -> FetchPolicy {
    FetchPolicy {
        allow_http: true,
        allow_private: true,
        ..FetchPolicy::default()
    }
}

/// §8 item 23: every literal spelling of loopback/private/metadata is refused and nothing
/// connects; §8 item 27: the same local server is fetched once private networks are allowed.
#[tokio::test]
async fn ssrf_literals_never_connect() {
    let rec = recorder("127.0.0.1").await;
    let p = rec.port;
    let fetcher = Fetcher::new(FetchPolicy {
        allow_http: true,
        ..FetchPolicy::default()
    });
    let urls = [
        format!("http://127.0.0.1:{p}/a.png"),
        format!("http://127.1:{p}/a.png"),
        format!("http://0x7f000001:{p}/a.png"),
        format!("http://2130706433:{p}/a.png"),
        format!("http://0177.0.0.1:{p}/a.png"),
        format!("http://0x7f.1:{p}/a.png"),
        format!("http://[::1]:{p}/a.png"),
        format!("http://[::ffff:127.0.0.1]:{p}/a.png"),
        format!("http://[::ffff:7f00:1]:{p}/a.png"),
        format!("http://[::127.0.0.1]:{p}/a.png"),
        format!("http://[64:ff9b::7f00:1]:{p}/a.png"),
        format!("http://[2002:7f00:1::]:{p}/a.png"),
        format!("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{p}/a.png"),
        format!("http://localhost:{p}/a.png"),
        format!("http://LOCALHOST.:{p}/a.png"),
        format!("https://127.0.0.1:{p}/a.png"),
        format!("http://0.0.0.0:{p}/a.png"),
        format!("http://[::]:{p}/a.png"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/".to_string(),
        "http://[::ffff:a9fe:a9fe]/".to_string(),
        "http://10.0.0.1/a.png".to_string(),
        "http://[2002:a00:1::]/a.png".to_string(),
        "http://[fd00:ec2::254]/".to_string(),
    ];
    for url in &urls {
        let t = Instant::now();
        let e = fetcher.fetch(url).await.unwrap_err();
        assert_eq!(e.code(), "FETCH_FORBIDDEN", "{url}: {e}");
        assert!(
            e.to_string().starts_with(&url[..url.len().min(12)]),
            "{url}: {e}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{url} took {:?}",
            t.elapsed()
        );
    }
    // Metadata stays refused even on a LAN setup.
    let lan_fetcher = Fetcher::new(lan());
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
    ] {
        assert_eq!(
            lan_fetcher.fetch(url).await.unwrap_err().code(),
            "FETCH_FORBIDDEN"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        rec.conns.load(Ordering::SeqCst),
        0,
        "a refused URL connected"
    );
    eprintln!(
        "SSRF literal forms refused without a connection: {}",
        urls.len()
    );

    // §8 item 27: the same kind of local URL is fetched once allowed (and by CIDR).
    let img = png();
    let body = img.clone();
    let srv = server(move |_| Reply::Ok(body.clone())).await;
    let url = format!("http://127.0.0.1:{}/img.png", srv.addr.port());
    assert_eq!(
        Fetcher::new(FetchPolicy {
            allow_http: true,
            ..FetchPolicy::default()
        })
        .fetch(&url)
        .await
        .unwrap_err()
        .code(),
        "FETCH_FORBIDDEN"
    );
    assert_eq!(Fetcher::new(lan()).fetch(&url).await.unwrap(), img);
    let cidr = FetchPolicy {
        allow_http: true,
        allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        ..FetchPolicy::default()
    };
    assert_eq!(Fetcher::new(cidr.clone()).fetch(&url).await.unwrap(), img);
    assert_eq!(
        Fetcher::new(cidr)
            .fetch(&format!("http://127.1:{}/img.png", srv.addr.port()))
            .await
            .unwrap(),
        img
    );
    let bytes = Fetcher::new(lan())
        .fetch(&format!("http://localhost:{}/img.png", srv.addr.port()))
        .await;
    // localhost may resolve to ::1 first; the server listens on 127.0.0.1 only, so either works or fails to connect
    if let Err(e) = bytes {
        assert_eq!(e.code(), "FETCH_FAILED", "{e}");
    }
    assert!(decode_image(&img, &DecodeLimits::default()).is_ok());
}

/// §8 item 25: ≤ 3 redirects followed (each re-checked); a 4th, or one to a forbidden
/// address, refused — and the forbidden address sees no connection.
#[tokio::test]
async fn redirects_followed_by_hand_and_rechecked() {
    let img = png();
    let other = recorder("127.0.0.2").await;
    let other_port = other.port;
    let body = img.clone();
    let srv = server(move |path| {
        if let Some(n) = path.strip_prefix("/r/") {
            let n: u32 = n.parse().unwrap();
            if n == 0 {
                Reply::Ok(body.clone())
            } else {
                Reply::Redirect(format!("/r/{}", n - 1))
            }
        } else if path == "/to-other" {
            Reply::Redirect(format!("http://127.0.0.2:{other_port}/x.png"))
        } else if path == "/to-metadata" {
            Reply::Redirect("http://169.254.169.254/latest/meta-data/".into())
        } else if path == "/to-v6-loopback" {
            Reply::Redirect(format!("http://[::ffff:127.0.0.2]:{other_port}/"))
        } else if path == "/to-file" {
            Reply::Redirect("file:///etc/passwd".into())
        } else {
            Reply::Status(404, "nope")
        }
    })
    .await;
    let base = format!("http://127.0.0.1:{}", srv.addr.port());
    // Only 127.0.0.1 is allowed (not the whole private space).
    let policy = FetchPolicy {
        allow_http: true,
        allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        ..FetchPolicy::default()
    };
    let f = Fetcher::new(policy);

    assert_eq!(f.fetch(&format!("{base}/r/3")).await.unwrap(), img);
    assert_eq!(srv.requests.load(Ordering::SeqCst), 4);

    let before = srv.requests.load(Ordering::SeqCst);
    let e = f.fetch(&format!("{base}/r/4")).await.unwrap_err();
    assert_eq!(e.code(), "FETCH_FORBIDDEN", "{e}");
    assert!(e.to_string().contains("more than 3 redirects"), "{e}");
    assert!(e.to_string().starts_with(&format!("{base}/r/4")), "{e}");
    assert_eq!(
        srv.requests.load(Ordering::SeqCst) - before,
        4,
        "the 5th hop must not be requested"
    );

    for path in ["/to-other", "/to-metadata", "/to-v6-loopback", "/to-file"] {
        let e = f.fetch(&format!("{base}{path}")).await.unwrap_err();
        assert_eq!(e.code(), "FETCH_FORBIDDEN", "{path}: {e}");
        assert!(e.to_string().contains("redirect 1 to"), "{path}: {e}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        other.conns.load(Ordering::SeqCst),
        0,
        "a refused redirect target was dialled"
    );

    let e = f.fetch(&format!("{base}/missing")).await.unwrap_err();
    assert_eq!(e.code(), "FETCH_FAILED");
    assert!(e.to_string().contains("404"), "{e}");
}

/// §8 item 26: the body is cut at the cap while streaming, whatever Content-Length says.
#[tokio::test]
async fn body_capped_while_streaming() {
    let cap = 1 << 20;
    let policy = FetchPolicy {
        max_bytes: cap,
        ..lan()
    };
    let f = Fetcher::new(policy);
    for (name, headers) in [
        ("no length", ""),
        (
            "lying Content-Length with chunked",
            "Content-Length: 10\r\nTransfer-Encoding: chunked\r\n",
        ),
        ("huge Content-Length", "Content-Length: 1073741824\r\n"),
        ("chunked", "Transfer-Encoding: chunked\r\n"),
    ] {
        let sent = Arc::new(AtomicUsize::new(0));
        let s2 = sent.clone();
        let srv = server(move |_| Reply::Endless(headers, s2.clone())).await;
        let t = Instant::now();
        let e = f
            .fetch(&format!("http://127.0.0.1:{}/big", srv.addr.port()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "IMAGE_TOO_LARGE", "{name}: {e}");
        assert!(
            e.to_string().contains("exceeds the 1048576 byte limit"),
            "{name}: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = sent.load(Ordering::SeqCst);
        eprintln!("body cap ({name}): refused after {:?}; server managed to send {} KiB before the client hung up", t.elapsed(), n / 1024);
        assert!(n < 64 << 20, "{name}: server sent {n} bytes");
    }
    // Small Content-Length is honoured as framing: the client reads exactly that, no more.
    let sent = Arc::new(AtomicUsize::new(0));
    let s2 = sent.clone();
    let srv = server(move |_| Reply::Endless("Content-Length: 1000\r\n", s2.clone())).await;
    let got = f
        .fetch(&format!("http://127.0.0.1:{}/x", srv.addr.port()))
        .await
        .unwrap();
    assert_eq!(got.len(), 1000);

    // Not an image → UNSUPPORTED_FORMAT, whatever the server claims.
    let srv = server(|_| Reply::Ok(b"<html>hi</html>".to_vec())).await;
    let e = f
        .fetch(&format!("http://127.0.0.1:{}/x.png", srv.addr.port()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "UNSUPPORTED_FORMAT", "{e}");
}

/// §8 item 26: a server that never answers hits the total timeout.
#[tokio::test]
async fn total_and_connect_timeouts_bind() {
    let srv = server(|_| Reply::Hang).await;
    let f = Fetcher::new(FetchPolicy {
        total_timeout: Duration::from_millis(800),
        ..lan()
    });
    let t = Instant::now();
    let e = f
        .fetch(&format!("http://127.0.0.1:{}/slow", srv.addr.port()))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code(), "FETCH_FAILED");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    eprintln!("total timeout 800 ms: refused after {took:?}");
    // Connect timeout: a listener whose accept queue is full drops further SYNs, so the
    // connect hangs until the connect timeout fires. (Outbound addresses are no use here: the
    // sandbox may intercept them.)
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = sock.listen(0).unwrap();
    let full_addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(full_addr)).await
        {
            fillers.push(c);
        }
    }
    let f = Fetcher::new(FetchPolicy {
        connect_timeout: Duration::from_millis(500),
        total_timeout: Duration::from_secs(20),
        ..lan()
    });
    let t = Instant::now();
    let e = f
        .fetch(&format!("http://{full_addr}/x.png"))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code(), "FETCH_FAILED", "{e}");
    eprintln!(
        "connect timeout 500 ms (accept queue full, {} fillers): failed after {took:?}: {e}",
        fillers.len()
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "took {took:?}: {e}"
    );
    assert!(
        e.to_string().contains("timed out") || e.to_string().contains("connect"),
        "{e}"
    );
    drop(full);
}

/// A resolver for tests: answers from a script, counts lookups.
struct Scripted {
    answers: Vec<Vec<&'static str>>,
    calls: AtomicUsize,
}

impl HostResolver for Scripted {
    fn resolve<'a>(
        &'a self,
        _host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn std::future::Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        let i = self
            .calls
            .fetch_add(1, Ordering::SeqCst)
            .min(self.answers.len() - 1);
        let out = self.answers[i]
            .iter()
            .map(|ip| SocketAddr::new(ip.parse().unwrap(), port))
            .collect();
        Box::pin(async move { Ok(out) })
    }
}

/// §8 item 24: mixed public+private answers are refused; only the validated address is dialled,
/// and reqwest never resolves the name a second time (a rebinding answer is never used).
#[tokio::test]
async fn rebinding_and_mixed_answers() {
    let rec = recorder("127.0.0.1").await;
    let mixed = Arc::new(Scripted {
        answers: vec![vec!["93.184.216.34", "127.0.0.1"]],
        calls: AtomicUsize::new(0),
    });
    let f = Fetcher::with_resolver(
        FetchPolicy {
            allow_http: true,
            allow_any_port: true,
            ..FetchPolicy::default()
        },
        mixed.clone(),
    );
    let e = f
        .fetch(&format!("http://rebind.test:{}/a.png", rec.port))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "FETCH_FORBIDDEN");
    assert!(
        e.to_string().contains("rebind.test resolves to 127.0.0.1"),
        "{e}"
    );
    let mapped = Arc::new(Scripted {
        answers: vec![vec!["::ffff:10.0.0.7"]],
        calls: AtomicUsize::new(0),
    });
    let f2 = Fetcher::with_resolver(FetchPolicy::default(), mapped);
    assert_eq!(
        f2.fetch("https://img.test/a.png").await.unwrap_err().code(),
        "FETCH_FORBIDDEN"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rec.conns.load(Ordering::SeqCst), 0);

    // First answer allowed (127.0.0.1 by CIDR), any later answer would be private: the fetch
    // works, with exactly one lookup — the connection used the checked address.
    let img = png();
    let body = img.clone();
    let srv = server(move |_| Reply::Ok(body.clone())).await;
    let rebinding = Arc::new(Scripted {
        answers: vec![vec!["127.0.0.1"], vec!["10.0.0.1"]],
        calls: AtomicUsize::new(0),
    });
    let policy = FetchPolicy {
        allow_http: true,
        allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        ..FetchPolicy::default()
    };
    let f = Fetcher::with_resolver(policy, rebinding.clone());
    assert_eq!(
        f.fetch(&format!("http://img.test:{}/a.png", srv.addr.port()))
            .await
            .unwrap(),
        img
    );
    assert_eq!(rebinding.calls.load(Ordering::SeqCst), 1);
}

/// §8 item 26: proxy environment variables are ignored (a proxy listener sees nothing).
#[tokio::test]
async fn proxy_env_is_ignored() {
    let proxy = recorder("127.0.0.1").await;
    let p = format!("http://127.0.0.1:{}", proxy.port);
    for k in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        std::env::set_var(k, &p);
    }
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");
    let img = png();
    let body = img.clone();
    let srv = server(move |_| Reply::Ok(body.clone())).await;
    let got = Fetcher::new(lan())
        .fetch(&format!("http://127.0.0.1:{}/a.png", srv.addr.port()))
        .await
        .unwrap();
    assert_eq!(got, img);
    assert_eq!(proxy.conns.load(Ordering::SeqCst), 0);
}
