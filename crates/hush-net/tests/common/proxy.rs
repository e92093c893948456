//! A recording UDP proxy placed in front of a TURN server: it forwards every datagram between
//! clients and the server and keeps a copy, so a test can inspect everything the relay saw.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Direction of a recorded datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    ToServer,
    ToClient,
}

/// Everything the proxy saw, in order.
pub type Recording = Arc<Mutex<Vec<(Dir, Vec<u8>)>>>;

pub struct RecordingProxy {
    /// Where clients should send (use this as the TURN server address).
    pub addr: SocketAddr,
    pub recorded: Recording,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl RecordingProxy {
    pub fn start(server: SocketAddr) -> Self {
        let listen = UdpSocket::bind("127.0.0.1:0").expect("proxy bind");
        listen
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = listen.local_addr().expect("addr");
        let listen = Arc::new(listen);
        let recorded: Recording = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, rec, st) = (listen.clone(), recorded.clone(), stop.clone());
        let main = std::thread::spawn(move || {
            let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut children = Vec::new();
            let mut buf = vec![0u8; 65_536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, client)) = l.recv_from(&mut buf) else {
                    continue;
                };
                let data = buf[..n].to_vec();
                rec.lock()
                    .expect("lock")
                    .push((Dir::ToServer, data.clone()));
                let up = upstreams.entry(client).or_insert_with(|| {
                    let u = UdpSocket::bind("127.0.0.1:0").expect("upstream bind");
                    u.connect(server).expect("connect");
                    u.set_read_timeout(Some(Duration::from_millis(20)))
                        .expect("timeout");
                    let u = Arc::new(u);
                    let (u2, l2, rec2, st2) = (u.clone(), l.clone(), rec.clone(), st.clone());
                    children.push(std::thread::spawn(move || {
                        let mut buf = vec![0u8; 65_536];
                        while !st2.load(Ordering::Relaxed) {
                            let Ok(n) = u2.recv(&mut buf) else { continue };
                            let data = buf[..n].to_vec();
                            rec2.lock()
                                .expect("lock")
                                .push((Dir::ToClient, data.clone()));
                            let _ = l2.send_to(&data, client);
                        }
                    }));
                    u
                });
                let _ = up.send(&data);
            }
            for c in children {
                let _ = c.join();
            }
        });
        Self {
            addr,
            recorded,
            stop,
            threads: vec![main],
        }
    }

    pub fn snapshot(&self) -> Vec<(Dir, Vec<u8>)> {
        self.recorded.lock().expect("lock").clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
