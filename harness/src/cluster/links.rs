//! Link faults (`partition`, `loss`) as packet filters in a container's network namespace.
//!
//! The kernel here has no `netem` qdisc, but `iptables` works inside a network namespace, and
//! `nsenter` reaches the namespace of a FROM-scratch container from the host (the images carry
//! no tools). A fault on the link `a`–`b` becomes `DROP` rules in `a`'s namespace, matched on
//! `b`'s address on the run's network: `INPUT -s b` and `OUTPUT -d b` for both ways, `OUTPUT -d b`
//! for one way (`from = a`, `to = b`); `loss` adds `-m statistic --mode random --probability p`,
//! so each packet is dropped with that probability. `heal` deletes exactly the rules its fault
//! inserted. Rules belong to the namespace: they end when a container restarts (a restarted
//! container comes back with a fresh namespace), and they apply to the replicas that run when
//! the fault is injected.

use std::net::Ipv4Addr;

use anyhow::{Context, bail};

/// Marks every rule the harness inserts (`iptables -L` shows it).
const COMMENT: &str = "agent-harness-link-fault";

/// How packets on a link are dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Drop {
    /// Every packet.
    All,
    /// Each packet with this probability.
    Random(f64),
}

/// One filter rule in one network namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// A process in the namespace (the container's init).
    pub pid: u32,
    /// `INPUT` or `OUTPUT`.
    pub chain: &'static str,
    /// The match and target after the chain name.
    pub spec: Vec<String>,
}

impl Rule {
    fn args(&self, op: &str) -> Vec<String> {
        let mut args = vec![
            "-t".to_string(),
            self.pid.to_string(),
            "-n".to_string(),
            "iptables".to_string(),
            "-w".to_string(),
            op.to_string(),
            self.chain.to_string(),
        ];
        args.extend(self.spec.iter().cloned());
        args
    }
}

/// The rules that drop packets between the service whose namespace `pid` holds and the peer at
/// `peer` (`one_way`: only packets towards the peer).
pub fn rules(pid: u32, peer: Ipv4Addr, one_way: bool, drop: Drop) -> Vec<Rule> {
    let mut rules = vec![rule(pid, "OUTPUT", "-d", peer, None, drop)];
    if !one_way {
        rules.push(rule(pid, "INPUT", "-s", peer, None, drop));
    }
    rules
}

/// The rules, in a client's namespace, that drop its packets to and from the proxy at
/// `proxy:port` that carries its connections to Redis: both ways, or (`one_way`) only towards
/// Redis (`towards_redis`) or only back from it.
pub fn rules_to_port(
    pid: u32,
    proxy: Ipv4Addr,
    port: u16,
    one_way: bool,
    towards_redis: bool,
    drop: Drop,
) -> Vec<Rule> {
    let mut rules = Vec::new();
    if !one_way || towards_redis {
        rules.push(rule(
            pid,
            "OUTPUT",
            "-d",
            proxy,
            Some(("--dport", port)),
            drop,
        ));
    }
    if !one_way || !towards_redis {
        rules.push(rule(
            pid,
            "INPUT",
            "-s",
            proxy,
            Some(("--sport", port)),
            drop,
        ));
    }
    rules
}

fn rule(
    pid: u32,
    chain: &'static str,
    direction: &str,
    peer: Ipv4Addr,
    port: Option<(&str, u16)>,
    drop: Drop,
) -> Rule {
    let mut spec = vec![direction.to_string(), format!("{peer}/32")];
    if let Some((which, port)) = port {
        spec.extend([
            "-p".to_string(),
            "tcp".to_string(),
            which.to_string(),
            port.to_string(),
        ]);
    }
    if let Drop::Random(p) = drop {
        spec.extend(
            ["-m", "statistic", "--mode", "random", "--probability"]
                .iter()
                .map(|s| s.to_string()),
        );
        spec.push(format!("{p}"));
    }
    spec.extend(
        ["-m", "comment", "--comment", COMMENT, "-j", "DROP"]
            .iter()
            .map(|s| s.to_string()),
    );
    Rule { pid, chain, spec }
}

/// Inserts the rules (first in their chains); on an error, the ones already inserted are removed.
pub async fn insert(rules: &[Rule]) -> anyhow::Result<()> {
    for (i, rule) in rules.iter().enumerate() {
        if let Err(e) = run(&rule.args("-I")).await {
            remove(&rules[..i]).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Deletes the rules; a namespace that is gone (its container restarted) has none left, so
/// failures are logged, not returned. Returns how many were deleted.
pub async fn remove(rules: &[Rule]) -> usize {
    let mut removed = 0;
    for rule in rules {
        match run(&rule.args("-D")).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::debug!("link fault rule already gone: {e:#}"),
        }
    }
    removed
}

async fn run(args: &[String]) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("nsenter")
        .args(args)
        .output()
        .await
        .context("running nsenter (util-linux) to reach a container's network namespace")?;
    if !output.status.success() {
        bail!(
            "nsenter {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process may enter other network namespaces (root); checked before a run that
/// needs link faults, so a missing privilege is one clear error and not a failed step.
pub fn check_privileges() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "link faults (partition, loss) put packet filters in the containers' network \
             namespaces with nsenter and iptables, which needs root"
        );
    }
    for tool in ["nsenter", "iptables"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
        if !found {
            bail!("link faults need `{tool}` on PATH (Debian: util-linux, iptables)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_way_partition_drops_both_directions_in_one_namespace() {
        let peer = Ipv4Addr::new(172, 18, 0, 3);
        let rules = rules(42, peer, false, Drop::All);
        let chains: Vec<_> = rules
            .iter()
            .map(|r| (r.chain, r.spec[0].as_str()))
            .collect();
        assert_eq!(chains, [("OUTPUT", "-d"), ("INPUT", "-s")]);
        assert_eq!(
            rules[0].args("-I").join(" "),
            "-t 42 -n iptables -w -I OUTPUT -d 172.18.0.3/32 -m comment --comment \
             agent-harness-link-fault -j DROP"
        );
    }

    #[test]
    fn a_proxied_link_is_cut_at_the_proxy_port_in_the_direction_asked() {
        let proxy = Ipv4Addr::new(172, 18, 0, 1);
        let both = rules_to_port(9, proxy, 4242, false, true, Drop::All);
        assert_eq!(
            both.iter()
                .map(|r| r.spec[..6].join(" "))
                .collect::<Vec<_>>(),
            [
                "-d 172.18.0.1/32 -p tcp --dport 4242",
                "-s 172.18.0.1/32 -p tcp --sport 4242"
            ]
        );
        let back = rules_to_port(9, proxy, 4242, true, false, Drop::All);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].chain, "INPUT");
    }

    #[test]
    fn one_way_loss_drops_a_share_of_outgoing_packets_only() {
        let rules = rules(7, Ipv4Addr::new(10, 0, 0, 2), true, Drop::Random(0.3));
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].args("-D").join(" "),
            "-t 7 -n iptables -w -D OUTPUT -d 10.0.0.2/32 -m statistic --mode random \
             --probability 0.3 -m comment --comment agent-harness-link-fault -j DROP"
        );
    }
}
