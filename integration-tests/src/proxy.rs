//! A fault-injecting TCP proxy on loopback, for partition tests. One proxy stands in
//! front of each coordinator; members address each other through the proxies and each
//! member's outgoing connections come from its own loopback IP (127.0.0.X, its listen
//! address), so a proxy knows who is talking. `isolate` cuts one member off from the
//! others in both directions (existing connections are dropped, new ones refused)
//! while clients from 127.0.0.1 still reach it; `heal` lifts it.

use anyhow::Result;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Who is cut off: (index of the proxy in front of it, its source IP).
type Rules = Option<(usize, IpAddr)>;

/// Proxies in front of a set of members.
pub struct FaultNet {
    /// runs the proxies; dropping it stops them
    _rt: tokio::runtime::Runtime,
    rules: watch::Sender<Rules>,
    /// the proxies' addresses, in the order of the targets
    pub proxies: Vec<SocketAddr>,
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
        let mut proxies = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
            proxies.push(listener.local_addr()?);
            let rx = rules.subscribe();
            rt.spawn(serve(i, listener, *target, rx));
        }
        Ok(Self {
            _rt: rt,
            rules,
            proxies,
        })
    }

    /// Cuts the member behind proxy `proxy` (whose connections come from `ip`) off
    /// from the others, both ways.
    pub fn isolate(&self, proxy: usize, ip: IpAddr) {
        self.rules.send_replace(Some((proxy, ip)));
    }

    /// Lets all traffic through again.
    pub fn heal(&self) {
        self.rules.send_replace(None);
    }
}

async fn serve(i: usize, listener: TcpListener, target: SocketAddr, rules: watch::Receiver<Rules>) {
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            return;
        };
        if blocked(&rules.borrow(), i, peer.ip()) {
            continue; // dropped: the caller sees a reset
        }
        let mut rules = rules.clone();
        tokio::spawn(async move {
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
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                _ = cut => {}
            }
        });
    }
}
