//! `delay`: a Toxiproxy-style proxy ([noxious](https://docs.rs/noxious), a Rust port of
//! Toxiproxy) in each service's path to Redis.
//!
//! The kernel here has no `netem` qdisc, so latency cannot come from the network itself. A
//! scenario with a `delay` step starts one proxy per client service (the orchestrator, each
//! worker replica) in the harness process, listening on the run network's gateway address, and
//! gives that service `REDIS_URL` pointing at it; the proxy forwards to Redis's published port
//! (fixed for the run, so it survives Redis restarts). A `delay` adds a latency toxic (`latency`
//! ± `jitter` per chunk) to the proxies of the link's client side: on the way back from Redis
//! for a link named with `between` (each request-reply round trip gains `latency`), or in the
//! named direction for `from`/`to`. Existing connections get the toxic too. `heal` removes
//! every toxic of the proxies it selects.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, bail};
use noxious::socket::TcpListener;
use noxious::{
    proxy::{ProxyConfig, ProxyRunner, Runner, Toxics},
    signal::{Close, Stop, Stopper},
    toxic::{StreamDirection, Toxic, ToxicEvent, ToxicEventKind, ToxicEventResult, ToxicKind},
};

/// One running proxy.
pub struct LinkProxy {
    name: String,
    listen_ip: Ipv4Addr,
    upstream: String,
    port: u16,
    events: bmrng::RequestSender<ToxicEvent, ToxicEventResult>,
    /// Names of the toxics in place. `heal` removes them by name: noxious 1.0.4's
    /// `RemoveAllToxics` clears only the upstream direction.
    toxics: std::sync::Mutex<Vec<String>>,
    stopper: Option<Stopper>,
    _close: Close,
}

impl LinkProxy {
    /// Starts a proxy on `listen_ip` (a free port) that forwards to `upstream`.
    pub async fn start(name: &str, listen_ip: Ipv4Addr, upstream: &str) -> anyhow::Result<Self> {
        let port = testkit::try_free_port()?;
        let (events, stopper, close) = run(name, listen_ip, port, upstream).await?;
        Ok(Self {
            name: name.to_string(),
            listen_ip,
            upstream: upstream.to_string(),
            port,
            events,
            toxics: std::sync::Mutex::new(Vec::new()),
            stopper: Some(stopper),
            _close: close,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Adds `latency` ± `jitter` in one direction (`upstream`: towards Redis).
    pub async fn delay(
        &self,
        latency: Duration,
        jitter: Duration,
        upstream: bool,
    ) -> anyhow::Result<()> {
        let direction = if upstream {
            StreamDirection::Upstream
        } else {
            StreamDirection::Downstream
        };
        let toxic = Toxic {
            kind: ToxicKind::Latency {
                latency: latency.as_millis() as u64,
                jitter: jitter.as_millis() as u64,
            },
            name: format!("delay-{}", if upstream { "up" } else { "down" }),
            toxicity: 1.0,
            direction,
        };
        let name = toxic.name.clone();
        let present = self.names().contains(&name);
        if present {
            self.send(ToxicEventKind::UpdateToxic(toxic)).await
        } else {
            self.send(ToxicEventKind::AddToxic(toxic)).await?;
            self.toxics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name);
            Ok(())
        }
    }

    /// Ends the delay: the proxy starts afresh on the same port, without toxics, and the
    /// connections it carried are closed, so every client reconnects without the latency.
    /// (noxious 1.0.4 does not always rebuild open connections when a toxic is removed or
    /// updated, and its `RemoveAllToxics` clears only the upstream direction.)
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        if self.names().is_empty() {
            return Ok(());
        }
        if let Some(stopper) = self.stopper.take() {
            stopper.stop();
        }
        // the old listener closes when its task sees the stop
        let mut last = None;
        for _ in 0..50 {
            match run(&self.name, self.listen_ip, self.port, &self.upstream).await {
                Ok((events, stopper, close)) => {
                    self.events = events;
                    self.stopper = Some(stopper);
                    self._close = close;
                    self.toxics
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.expect("tried")).context("restarting the proxy without its delay")
    }

    fn names(&self) -> Vec<String> {
        self.toxics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn send(&self, kind: ToxicEventKind) -> anyhow::Result<()> {
        let event = ToxicEvent {
            proxy_name: self.name.clone(),
            kind,
        };
        match self.events.send_receive(event).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("the proxy for {} refused the toxic: {e}", self.name),
            Err(e) => bail!("the proxy for {} is gone: {e}", self.name),
        }
    }
}

/// Binds and runs one proxy; returns its toxic channel and its stop and close handles.
async fn run(
    name: &str,
    listen_ip: Ipv4Addr,
    port: u16,
    upstream: &str,
) -> anyhow::Result<(
    bmrng::RequestSender<ToxicEvent, ToxicEventResult>,
    Stopper,
    Close,
)> {
    let config = ProxyConfig {
        name: name.to_string(),
        listen: format!("{listen_ip}:{port}"),
        upstream: upstream.to_string(),
        enabled: true,
        rand_seed: None,
    };
    let (listener, info) = ProxyRunner::initialize_proxy::<TcpListener>(config, Toxics::empty())
        .await
        .with_context(|| format!("starting the proxy for {name} on {listen_ip}:{port}"))?;
    let (events, receiver) = bmrng::channel(4);
    let (stop, stopper) = Stop::new();
    let (close, closer) = Close::new();
    let proxy_name = name.to_string();
    tokio::spawn(async move {
        if let Err(e) = ProxyRunner::run_proxy(listener, info, receiver, stop, closer).await {
            tracing::warn!("the proxy for {proxy_name} stopped: {e}");
        }
    });
    Ok((events, stopper, close))
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        if let Some(stopper) = self.stopper.take() {
            stopper.stop();
        }
    }
}
