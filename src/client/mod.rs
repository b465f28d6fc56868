//! Clients of a running primary: `reloadsup ctl` over the local control socket, and
//! `reloadsup console` over TLS.

pub(crate) mod console;
pub(crate) mod ctl;
