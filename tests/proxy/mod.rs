//! A TCP proxy in the test process, in front of a database server, that a test can stop: its
//! connections are cut and new ones refused, as when the server goes down mid-run, while the
//! server itself stays up for the other tests.
#![allow(dead_code)]

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct Proxy {
    addr: SocketAddr,
    stopped: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// A proxy to the server of `url` (`scheme://user:password@host:port/database`).
    pub fn to(url: &str) -> Proxy {
        let (_, rest) = url.split_once('@').expect("a URL with user@host");
        let host_port = rest.split('/').next().expect("host:port");
        let target = host_port
            .to_socket_addrs()
            .expect("resolve the server")
            .next()
            .expect("an address");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let stopped = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (accept_stopped, accept_streams) = (Arc::clone(&stopped), Arc::clone(&streams));
        thread::spawn(move || {
            for client in listener.incoming() {
                if accept_stopped.load(Ordering::SeqCst) {
                    // The listener is dropped with this thread: the port refuses from now on.
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut kept = accept_streams.lock().unwrap();
                for stream in [&client, &server] {
                    kept.push(stream.try_clone().expect("clone a stream"));
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy {
            addr,
            stopped,
            streams,
        }
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let (user, rest) = url.split_once('@').expect("a URL with user@host");
        let (_, path) = rest.split_once('/').unwrap_or((rest, ""));
        format!("{user}@{}/{path}", self.addr)
    }

    /// Cuts every connection and refuses new ones.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees the flag and drops the listener.
        let _ = TcpStream::connect(self.addr);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
    });
}
