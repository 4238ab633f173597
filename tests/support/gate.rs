//! A TCP relay that can be switched off, to make a peer (moto as AWS STS) unreachable, or
//! stalled, to make it hang (the kube-apiserver, for a leader whose renewals never answer).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fedcred_doubles::Config;

/// A TCP relay in front of a loopback port that can be switched off: while down it closes
/// every new connection at once and has cut every open one, as a dead endpoint does.
pub struct Gate {
    port: u16,
    down: Arc<AtomicBool>,
    /// While set, nothing is relayed either way; connections stay open and hang.
    stalled: Arc<AtomicBool>,
    /// Connections closed at once because the gate was down.
    pub refused: Arc<AtomicU64>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Gate {
    /// Relays to `127.0.0.1:target`, up.
    pub fn start(target: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, st, r, o) = (down.clone(), stalled.clone(), refused.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if d.load(Ordering::Relaxed) {
                    r.fetch_add(1, Ordering::Relaxed);
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                {
                    let mut open = o.lock().unwrap();
                    open.retain(|s| s.peer_addr().is_ok());
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                relay(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    st.clone(),
                );
                relay(server, client, st.clone());
            }
        });
        Gate {
            port,
            down,
            stalled,
            refused,
            open,
        }
    }

    /// A gate in front of the moto of `config`, added to it as an AWS STS endpoint that the
    /// Google doubles accept and check against moto directly.
    pub fn before_moto(config: &mut Config) -> Gate {
        let moto = config.moto_url.clone().unwrap();
        let port: u16 = moto.rsplit(':').next().unwrap().parse().unwrap();
        let gate = Gate::start(port);
        config.aws_sts_endpoints.push(gate.url());
        config.aws_sts_routes.push((gate.url(), moto));
        gate
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stalls the gate (every connection, open or new, hangs: nothing is relayed either way)
    /// or lets it relay again.
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Relaxed);
    }

    /// Switches the gate down (cutting every open connection) or up again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
        if down {
            for stream in self.open.lock().unwrap().drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies `from` to `to` on a thread of its own until `from` ends, then ends `to`; while
/// `stalled`, holds what it read instead of passing it on.
fn relay(mut from: TcpStream, mut to: TcpStream, stalled: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            while stalled.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    while stalled.load(Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
