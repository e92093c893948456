//! Limits and window sizes of an [`SrtpContext`](crate::SrtpContext).

use crate::replay::MAX_WINDOW;
use crate::Error;

/// Settings of an [`SrtpContext`](crate::SrtpContext), built with [`SrtpConfig::builder`].
///
/// ```
/// use hush_srtp::SrtpConfig;
/// let config = SrtpConfig::builder().replay_window(1024).max_ssrcs(8).build()?;
/// assert_eq!(config.replay_window(), 1024);
/// # Ok::<(), hush_srtp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpConfig {
    replay_window: usize,
    max_ssrcs: usize,
    srtp_packet_limit: u64,
    srtcp_packet_limit: u64,
    rekey_grace_packets: u64,
}

impl SrtpConfig {
    /// Default replay window, in packets (RFC 3711 §3.3.2 asks for at least 64).
    pub const DEFAULT_REPLAY_WINDOW: usize = 64;
    /// Default limit of SSRCs per context and direction.
    pub const DEFAULT_MAX_SSRCS: usize = 64;
    /// SRTP packets one master key may protect (RFC 3711 §9.2): 2^48.
    pub const MAX_SRTP_PACKETS: u64 = 1 << 48;
    /// SRTCP packets one master key may protect (RFC 3711 §9.2): 2^31.
    pub const MAX_SRTCP_PACKETS: u64 = 1 << 31;
    /// Default number of packets that must authenticate under a new key before the previous key
    /// is forgotten (see [`SrtpContext::rekey`](crate::SrtpContext::rekey)).
    pub const DEFAULT_REKEY_GRACE_PACKETS: u64 = 512;

    /// Starts from the defaults.
    pub fn builder() -> SrtpConfigBuilder {
        SrtpConfigBuilder {
            config: Self::default(),
        }
    }

    /// Replay window per SSRC, in packets (same size for SRTP and SRTCP).
    #[must_use]
    pub fn replay_window(&self) -> usize {
        self.replay_window
    }

    /// Most SSRCs tracked per direction and per protocol (SRTP, SRTCP).
    #[must_use]
    pub fn max_ssrcs(&self) -> usize {
        self.max_ssrcs
    }

    /// SRTP packets one master key may protect before [`Error::KeyExhausted`].
    #[must_use]
    pub fn srtp_packet_limit(&self) -> u64 {
        self.srtp_packet_limit
    }

    /// SRTCP packets one master key may protect before [`Error::KeyExhausted`].
    #[must_use]
    pub fn srtcp_packet_limit(&self) -> u64 {
        self.srtcp_packet_limit
    }

    /// Packets that must authenticate under a new key before the previous one is dropped.
    #[must_use]
    pub fn rekey_grace_packets(&self) -> u64 {
        self.rekey_grace_packets
    }
}

impl Default for SrtpConfig {
    fn default() -> Self {
        Self {
            replay_window: Self::DEFAULT_REPLAY_WINDOW,
            max_ssrcs: Self::DEFAULT_MAX_SSRCS,
            srtp_packet_limit: Self::MAX_SRTP_PACKETS,
            srtcp_packet_limit: Self::MAX_SRTCP_PACKETS,
            rekey_grace_packets: Self::DEFAULT_REKEY_GRACE_PACKETS,
        }
    }
}

/// Builder of an [`SrtpConfig`]; values are checked by [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use]
pub struct SrtpConfigBuilder {
    config: SrtpConfig,
}

impl SrtpConfigBuilder {
    /// Replay window per SSRC in packets: a multiple of 64 from 64 to 32768. Default 64.
    pub fn replay_window(mut self, packets: usize) -> Self {
        self.config.replay_window = packets;
        self
    }

    /// Most SSRCs per direction and protocol, from 1 to 65536. Default 64. A packet for one more
    /// SSRC is refused with [`Error::TooManySsrcs`].
    pub fn max_ssrcs(mut self, n: usize) -> Self {
        self.config.max_ssrcs = n;
        self
    }

    /// SRTP packets one master key may protect, from 1 to 2^48 (the default). Lower it to force
    /// earlier rekeying, or in tests.
    pub fn srtp_packet_limit(mut self, n: u64) -> Self {
        self.config.srtp_packet_limit = n;
        self
    }

    /// SRTCP packets one master key may protect, from 1 to 2^31 (the default).
    pub fn srtcp_packet_limit(mut self, n: u64) -> Self {
        self.config.srtcp_packet_limit = n;
        self
    }

    /// Packets (SRTP and SRTCP together) that must authenticate under a new key before the
    /// previous key is dropped after a rekey. 0 drops it at the first one. Default 512.
    pub fn rekey_grace_packets(mut self, n: u64) -> Self {
        self.config.rekey_grace_packets = n;
        self
    }

    /// Checks the values and returns the config.
    pub fn build(self) -> Result<SrtpConfig, Error> {
        let c = self.config;
        if c.replay_window < 64
            || c.replay_window > MAX_WINDOW
            || !c.replay_window.is_multiple_of(64)
        {
            return Err(Error::InvalidConfig(
                "replay_window must be a multiple of 64 from 64 to 32768",
            ));
        }
        if c.max_ssrcs == 0 || c.max_ssrcs > 65_536 {
            return Err(Error::InvalidConfig("max_ssrcs must be from 1 to 65536"));
        }
        if c.srtp_packet_limit == 0 || c.srtp_packet_limit > SrtpConfig::MAX_SRTP_PACKETS {
            return Err(Error::InvalidConfig(
                "srtp_packet_limit must be from 1 to 2^48",
            ));
        }
        if c.srtcp_packet_limit == 0 || c.srtcp_packet_limit > SrtpConfig::MAX_SRTCP_PACKETS {
            return Err(Error::InvalidConfig(
                "srtcp_packet_limit must be from 1 to 2^31",
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c = SrtpConfig::builder().build().unwrap();
        assert_eq!(c, SrtpConfig::default());
        assert_eq!(c.replay_window(), 64);
        for bad in [0, 63, 65, 100, 32_832] {
            assert!(SrtpConfig::builder().replay_window(bad).build().is_err());
        }
        assert!(SrtpConfig::builder().replay_window(32_768).build().is_ok());
        assert!(SrtpConfig::builder().max_ssrcs(0).build().is_err());
        assert!(SrtpConfig::builder()
            .srtp_packet_limit((1 << 48) + 1)
            .build()
            .is_err());
        assert!(SrtpConfig::builder().srtcp_packet_limit(0).build().is_err());
    }
}
