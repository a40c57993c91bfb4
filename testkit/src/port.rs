//! Free TCP ports on the loopback interface.

use std::net::TcpListener;

use anyhow::Context;

/// A free TCP port on 127.0.0.1: free when asked (the OS picks it; another process may take it
/// before the caller binds it, a race accepted in tests and local runs).
///
/// # Panics
/// When 127.0.0.1 cannot be bound at all; [`try_free_port`] returns the error instead.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`free_port`], with the error instead of a panic (for tools).
pub fn try_free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }
}
