//! A fault-injecting TCP proxy on loopback, for partition tests. One proxy stands in
//! front of each coordinator; members address each other through the proxies and each
//! member's outgoing connections come from its own loopback IP (127.0.0.X, its listen
//! address), so a proxy knows who is talking. `isolate` cuts one member off from the
//! others in both directions (existing connections are dropped, new ones refused)
//! while clients from 127.0.0.1 still reach it; `heal` lifts it. `flaky` makes every
//! proxy refuse every n-th new connection and cut each connection after a lifetime,
//! and `delay` holds new connections, for transient-failure tests (also in front of
//! workers, which then `--advertise` their proxy's address).

use anyhow::Result;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Who is cut off: (index of the proxy in front of it, its source IP).
type Rules = Option<(usize, IpAddr)>;

/// Proxies in front of a set of members.
pub struct FaultNet {
    /// runs the proxies; dropping it stops them
    _rt: tokio::runtime::Runtime,
    rules: watch::Sender<Rules>,
    flaky: Arc<Flaky>,
    /// the proxies' addresses, in the order of the targets
    pub proxies: Vec<SocketAddr>,
}

/// Transient faults: every `refuse_every`-th new connection is refused, and every
/// connection is cut after `lifetime_ms` (0: off).
#[derive(Default)]
struct Flaky {
    refuse_every: AtomicU64,
    lifetime_ms: AtomicU64,
    delay_ms: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn blocked(rules: &Rules, proxy: usize, src: IpAddr) -> bool {
    match rules {
        Some((isolated, ip)) => src == *ip || (proxy == *isolated && src != CLIENT),
        None => false,
    }
}

impl FaultNet {
    /// One proxy on 127.0.0.1 per target.
    pub fn start(targets: &[SocketAddr]) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (rules, _) = watch::channel(None);
        let flaky = Arc::new(Flaky::default());
        let mut proxies = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
            proxies.push(listener.local_addr()?);
            let rx = rules.subscribe();
            rt.spawn(serve(i, listener, *target, rx, flaky.clone()));
        }
        Ok(Self {
            _rt: rt,
            rules,
            flaky,
            proxies,
        })
    }

    /// Cuts the member behind proxy `proxy` (whose connections come from `ip`) off
    /// from the others, both ways.
    pub fn isolate(&self, proxy: usize, ip: IpAddr) {
        self.rules.send_replace(Some((proxy, ip)));
    }

    /// Lets all traffic through again (and ends `flaky`).
    pub fn heal(&self) {
        self.rules.send_replace(None);
        self.flaky.refuse_every.store(0, Ordering::Relaxed);
        self.flaky.lifetime_ms.store(0, Ordering::Relaxed);
        self.flaky.delay_ms.store(0, Ordering::Relaxed);
    }

    /// Holds every new connection this long before it is forwarded (zero: off).
    pub fn delay(&self, delay: std::time::Duration) {
        self.flaky
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// New connections refused so far by `flaky`.
    pub fn refused(&self) -> u64 {
        self.flaky.refused.load(Ordering::Relaxed)
    }

    /// Refuses every `refuse_every`-th new connection and cuts every connection after
    /// `lifetime` (zero: off).
    pub fn flaky(&self, refuse_every: u64, lifetime: std::time::Duration) {
        self.flaky
            .refuse_every
            .store(refuse_every, Ordering::Relaxed);
        self.flaky
            .lifetime_ms
            .store(lifetime.as_millis() as u64, Ordering::Relaxed);
    }
}

async fn serve(
    i: usize,
    listener: TcpListener,
    target: SocketAddr,
    rules: watch::Receiver<Rules>,
    flaky: Arc<Flaky>,
) {
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            return;
        };
        if blocked(&rules.borrow(), i, peer.ip()) {
            continue; // dropped: the caller sees a reset
        }
        let n = flaky.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        let every = flaky.refuse_every.load(Ordering::Relaxed);
        if every > 0 && n.is_multiple_of(every) {
            flaky.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let lifetime = flaky.lifetime_ms.load(Ordering::Relaxed);
        let delay = flaky.delay_ms.load(Ordering::Relaxed);
        let mut rules = rules.clone();
        tokio::spawn(async move {
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (mut a, mut b) = (inbound, outbound);
            let cut = async {
                loop {
                    if blocked(&rules.borrow_and_update(), i, peer.ip()) {
                        return;
                    }
                    if rules.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            let expire = async {
                if lifetime == 0 {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(lifetime)).await;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                _ = cut => {}
                _ = expire => {}
            }
        });
    }
}
