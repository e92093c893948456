//! [`SrtpContext`]: session keys, per-SSRC state and the four packet transforms.

use tracing::debug;
use zeroize::{Zeroize, Zeroizing};

use crate::aead::{Aead, NONCE_LEN, TAG_LEN};
use crate::header::{parse_rtcp, parse_rtp, RTCP_HEADER};
use crate::kdf;
use crate::replay::{estimate_index, Reject, ReplayWindow};
use crate::{Error, SrtpConfig, Suite};

/// Length of the SRTCP trailer word (E flag and 31-bit SRTCP index).
const SRTCP_TRAILER: usize = 4;
/// The E flag in the SRTCP trailer: the packet body is encrypted.
const E_FLAG: u32 = 0x8000_0000;
/// Largest SRTCP index (31 bits).
const MAX_SRTCP_INDEX: u32 = 0x7fff_ffff;

/// The SRTP/SRTCP session keys and salts of one master key.
struct SessionKeys {
    rtp: Aead,
    rtp_salt: [u8; NONCE_LEN],
    rtcp: Aead,
    rtcp_salt: [u8; NONCE_LEN],
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        // The AES key schedules and GHASH keys wipe themselves (zeroize features of aes/ghash).
        self.rtp_salt.zeroize();
        self.rtcp_salt.zeroize();
    }
}

impl SessionKeys {
    /// Runs the RFC 3711 KDF for the four session values AEAD suites use.
    fn derive(suite: Suite, master_key: &[u8], master_salt: &[u8]) -> Result<Self, Error> {
        if master_key.len() != suite.key_len() {
            return Err(Error::BadKeyLength {
                expected: suite.key_len(),
                got: master_key.len(),
            });
        }
        if master_salt.len() != suite.salt_len() {
            return Err(Error::BadSaltLength {
                expected: suite.salt_len(),
                got: master_salt.len(),
            });
        }
        let mut key_buf = Zeroizing::new([0u8; 32]);
        let key = &mut key_buf[..suite.key_len()];
        kdf::derive(master_key, master_salt, kdf::LABEL_RTP_ENCRYPTION, key)?;
        let rtp = Aead::new(key)?;
        kdf::derive(master_key, master_salt, kdf::LABEL_RTCP_ENCRYPTION, key)?;
        let rtcp = Aead::new(key)?;
        let mut keys = Self {
            rtp,
            rtp_salt: [0; NONCE_LEN],
            rtcp,
            rtcp_salt: [0; NONCE_LEN],
        };
        kdf::derive(
            master_key,
            master_salt,
            kdf::LABEL_RTP_SALT,
            &mut keys.rtp_salt,
        )?;
        kdf::derive(
            master_key,
            master_salt,
            kdf::LABEL_RTCP_SALT,
            &mut keys.rtcp_salt,
        )?;
        Ok(keys)
    }

    fn aead(&self, kind: Kind) -> (&Aead, &[u8; NONCE_LEN]) {
        match kind {
            Kind::Rtp => (&self.rtp, &self.rtp_salt),
            Kind::Rtcp => (&self.rtcp, &self.rtcp_salt),
        }
    }
}

/// SRTP or SRTCP.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rtp,
    Rtcp,
}

/// RFC 7714 §8.1: `IV = (0x0000 || SSRC || ROC || SEQ) XOR salt`, where `ROC || SEQ` is the
/// 48-bit packet index.
fn rtp_nonce(salt: &[u8; NONCE_LEN], ssrc: u32, index: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[2..6].copy_from_slice(&ssrc.to_be_bytes());
    n[6..12].copy_from_slice(&index.to_be_bytes()[2..]);
    for (b, s) in n.iter_mut().zip(salt) {
        *b ^= s;
    }
    n
}

/// RFC 7714 §9.1: `IV = (0x0000 || SSRC || 0x0000 || 0 || SRTCP index) XOR salt`.
fn rtcp_nonce(salt: &[u8; NONCE_LEN], ssrc: u32, index: u32) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[2..6].copy_from_slice(&ssrc.to_be_bytes());
    n[8..12].copy_from_slice(&(index & MAX_SRTCP_INDEX).to_be_bytes());
    for (b, s) in n.iter_mut().zip(salt) {
        *b ^= s;
    }
    n
}

fn nonce(keys: &SessionKeys, kind: Kind, ssrc: u32, index: u64) -> [u8; NONCE_LEN] {
    match kind {
        Kind::Rtp => rtp_nonce(&keys.rtp_salt, ssrc, index),
        // SRTCP indices are 31-bit; the caller took them from a 31-bit field.
        Kind::Rtcp => rtcp_nonce(&keys.rtcp_salt, ssrc, index as u32),
    }
}

/// The keys of one master key and what has been sent under them.
struct Epoch {
    keys: SessionKeys,
    srtp_sent: u64,
    srtcp_sent: u64,
    /// SSRCs whose send state was removed ([`SrtpContext::remove_ssrc`]) under this key: their
    /// packet indices (AES-GCM nonces) may have been used, so they send nothing more under it.
    /// At most `max_ssrcs` (they keep their place in that limit until the next key).
    retired: Vec<u32>,
}

impl Epoch {
    fn new(suite: Suite, master_key: &[u8], master_salt: &[u8]) -> Result<Self, Error> {
        Ok(Self {
            keys: SessionKeys::derive(suite, master_key, master_salt)?,
            srtp_sent: 0,
            srtcp_sent: 0,
            retired: Vec::new(),
        })
    }

    /// Fails with [`Error::SsrcRetired`] if `ssrc` was retired under this key.
    fn check_not_retired(&self, ssrc: u32) -> Result<(), Error> {
        if self.retired.contains(&ssrc) {
            return Err(Error::SsrcRetired { ssrc });
        }
        Ok(())
    }
}

/// Which epoch authenticated a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Current,
    Previous,
}

/// State per SSRC, in a small vector searched linearly (a call has a handful of SSRCs).
struct SsrcMap<T> {
    entries: Vec<(u32, T)>,
    limit: usize,
}

impl<T> SsrcMap<T> {
    fn new(limit: usize) -> Self {
        Self {
            entries: Vec::new(),
            limit,
        }
    }

    #[inline]
    fn find(&self, ssrc: u32) -> Option<usize> {
        self.entries.iter().position(|(s, _)| *s == ssrc)
    }

    /// Room for one more SSRC, with `held` places taken by SSRCs not in the map.
    fn check_room(&self, held: usize) -> Result<(), Error> {
        if self.entries.len() + held < self.limit {
            Ok(())
        } else {
            Err(Error::TooManySsrcs { limit: self.limit })
        }
    }

    fn get(&self, ssrc: u32) -> Option<&T> {
        self.entries
            .iter()
            .find_map(|(s, t)| (*s == ssrc).then_some(t))
    }

    fn remove(&mut self, ssrc: u32) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(s, _)| *s != ssrc);
        before != self.entries.len()
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// SRTP/SRTCP protection for one direction of a call, for any number of SSRCs (up to a limit).
///
/// One context holds the session keys derived from one master key and salt (plus, for a short
/// time after [`rekey`](Self::rekey), the previous ones), and per SSRC the state each transform
/// needs: the highest packet index and replay window of what was sent (so a packet index, and so
/// an AES-GCM nonce, is never used twice) and of what was received (rollover counter estimation
/// and replay protection), and the SRTCP index.
///
/// Use a context for one direction: the sender's context only protects, the receiver's only
/// unprotects, each with the master key of that direction. (Protecting with a context that
/// another endpoint also protects with would reuse nonces whenever both send the same SSRC and
/// index.)
///
/// # Methods
/// - Transforms, in place on a `Vec<u8>`: [`protect_rtp`](Self::protect_rtp),
///   [`unprotect_rtp`](Self::unprotect_rtp), [`protect_rtcp`](Self::protect_rtcp),
///   [`unprotect_rtcp`](Self::unprotect_rtcp). They never allocate once the per-SSRC state
///   exists, except that `protect_*` grows the vector when its capacity cannot take the
///   [`Suite::RTP_OVERHEAD`] / [`Suite::RTCP_OVERHEAD`] bytes they append: reserve them.
/// - Keys: [`rekey`](Self::rekey), [`drop_previous_epoch`](Self::drop_previous_epoch).
/// - State: [`remove_ssrc`](Self::remove_ssrc) and the getters.
///
/// # Errors and state
/// A transform that returns an error leaves the context as it was. `unprotect_*` authenticate the
/// packet before they change any state, so a forged packet can move neither the rollover
/// counter nor the replay window, nor create state for a new SSRC. When they fail, the packet's
/// length is unchanged but its payload bytes are unspecified: drop it.
pub struct SrtpContext {
    suite: Suite,
    config: SrtpConfig,
    current: Epoch,
    previous: Option<Epoch>,
    /// Packets authenticated under `current` since the last rekey (drops `previous` at the
    /// grace count).
    since_rekey: u64,
    /// The last packet that authenticated used the previous key; try it first.
    prefer_previous: bool,
    /// Rekeys done so far.
    epoch: u64,
    tx_rtp: SsrcMap<ReplayWindow>,
    rx_rtp: SsrcMap<ReplayWindow>,
    /// Last SRTCP index sent per SSRC.
    tx_rtcp: SsrcMap<u32>,
    rx_rtcp: SsrcMap<ReplayWindow>,
    /// Saved ciphertext for trial decryption during a key overlap, and SRTCP AAD when the E flag
    /// is clear. Grows once, then is reused.
    scratch: Vec<u8>,
}

impl SrtpContext {
    /// A context with the default [`SrtpConfig`].
    ///
    /// `master_key` must be [`Suite::key_len`] bytes (16 or 32) and `master_salt`
    /// [`Suite::salt_len`] bytes (12), as from DTLS-SRTP keying material or hush-crypto's
    /// `MediaKeys`. The session keys are derived with the RFC 3711 KDF; the master key is not
    /// kept.
    pub fn new(suite: Suite, master_key: &[u8], master_salt: &[u8]) -> Result<Self, Error> {
        Self::with_config(suite, master_key, master_salt, SrtpConfig::default())
    }

    /// A context with the given config.
    pub fn with_config(
        suite: Suite,
        master_key: &[u8],
        master_salt: &[u8],
        config: SrtpConfig,
    ) -> Result<Self, Error> {
        let current = Epoch::new(suite, master_key, master_salt)?;
        Ok(Self::from_epoch(suite, config, current))
    }

    fn from_epoch(suite: Suite, config: SrtpConfig, current: Epoch) -> Self {
        let limit = config.max_ssrcs();
        Self {
            suite,
            current,
            previous: None,
            since_rekey: 0,
            prefer_previous: false,
            epoch: 0,
            tx_rtp: SsrcMap::new(limit),
            rx_rtp: SsrcMap::new(limit),
            tx_rtcp: SsrcMap::new(limit),
            rx_rtcp: SsrcMap::new(limit),
            scratch: Vec::new(),
            config,
        }
    }

    /// A context keyed directly with session keys and salts, skipping the KDF (for the RFC 7714
    /// vectors, which are given at that level).
    #[cfg(test)]
    pub(crate) fn from_session_keys(
        suite: Suite,
        rtp_key: &[u8],
        rtp_salt: [u8; NONCE_LEN],
        rtcp_key: &[u8],
        rtcp_salt: [u8; NONCE_LEN],
    ) -> Self {
        let keys = SessionKeys {
            rtp: Aead::new(rtp_key).unwrap(),
            rtp_salt,
            rtcp: Aead::new(rtcp_key).unwrap(),
            rtcp_salt,
        };
        let epoch = Epoch {
            keys,
            srtp_sent: 0,
            srtcp_sent: 0,
            retired: Vec::new(),
        };
        Self::from_epoch(suite, SrtpConfig::default(), epoch)
    }

    /// Makes the next SRTCP packet protected for `ssrc` carry `index` (tests only).
    #[cfg(test)]
    pub(crate) fn set_next_srtcp_index(&mut self, ssrc: u32, index: u32) {
        self.tx_rtcp.remove(ssrc);
        self.tx_rtcp.entries.push((ssrc, index - 1));
    }

    /// The suite of this context.
    #[must_use]
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The config of this context.
    #[must_use]
    pub fn config(&self) -> &SrtpConfig {
        &self.config
    }

    /// How many times [`rekey`](Self::rekey) was called (0 for a new context).
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the previous epoch's key is still accepted by `unprotect_*`.
    #[must_use]
    pub fn has_previous_epoch(&self) -> bool {
        self.previous.is_some()
    }

    /// Highest SRTP packet index (`ROC << 16 | SEQ`) protected for `ssrc`, if any.
    #[must_use]
    pub fn highest_rtp_index_sent(&self, ssrc: u32) -> Option<u64> {
        self.tx_rtp.get(ssrc).map(ReplayWindow::max)
    }

    /// Highest SRTP packet index (`ROC << 16 | SEQ`) authenticated for `ssrc`, if any. Its top
    /// 32 bits are the receiver's rollover counter.
    #[must_use]
    pub fn highest_rtp_index_received(&self, ssrc: u32) -> Option<u64> {
        self.rx_rtp.get(ssrc).map(ReplayWindow::max)
    }

    /// Last SRTCP index protected for `ssrc`, if any.
    #[must_use]
    pub fn last_rtcp_index_sent(&self, ssrc: u32) -> Option<u32> {
        self.tx_rtcp.get(ssrc).copied()
    }

    /// Highest SRTCP index authenticated for `ssrc`, if any.
    #[must_use]
    pub fn highest_rtcp_index_received(&self, ssrc: u32) -> Option<u32> {
        // Windows over SRTCP indices only ever hold 31-bit values.
        self.rx_rtcp.get(ssrc).map(|w| w.max() as u32)
    }

    /// Forgets all state of `ssrc` (both directions, SRTP and SRTCP), e.g. after an RTCP BYE.
    /// Returns whether there was any.
    ///
    /// Receiving: the SSRC's place is free at once for a new SSRC, and later packets of that
    /// SSRC are treated as a new stream, so old packets still inside the network could be
    /// accepted once more. Only remove an SSRC that is gone for good.
    ///
    /// Sending: the SSRC is *retired* for the current master key. Its packet indices, and so
    /// its AES-GCM nonces, may already have been used, so [`protect_rtp`](Self::protect_rtp) and
    /// [`protect_rtcp`](Self::protect_rtcp) refuse it with [`Error::SsrcRetired`] until the
    /// next [`rekey`](Self::rekey), and it keeps its place in [`SrtpConfig::max_ssrcs`] until
    /// then (which bounds the memory retirement takes). Send a new stream on a new SSRC.
    pub fn remove_ssrc(&mut self, ssrc: u32) -> bool {
        let a = self.tx_rtp.remove(ssrc);
        let b = self.rx_rtp.remove(ssrc);
        let c = self.tx_rtcp.remove(ssrc);
        let d = self.rx_rtcp.remove(ssrc);
        if (a || c) && !self.current.retired.contains(&ssrc) {
            debug!(ssrc, "srtp: send ssrc retired for this key");
            self.current.retired.push(ssrc);
        }
        a || b || c || d
    }

    /// Switches to a new master key and salt (same suite), starting a new key epoch.
    ///
    /// The rule:
    /// - `protect_*` use the new key from the next packet on. The packet limits count afresh.
    ///   Sequence numbers, rollover counters and SRTCP indices carry on: they belong to the
    ///   streams, not to the key. SSRCs retired by [`remove_ssrc`](Self::remove_ssrc) under
    ///   the old key may send again, as new streams.
    /// - `unprotect_*` accept both keys for a while, so packets protected under the old key and
    ///   still in flight are not lost: the previous key is dropped once
    ///   [`SrtpConfig::rekey_grace_packets`] packets (at least one) have authenticated under
    ///   the new key, at the next `rekey`, or at [`drop_previous_epoch`](Self::drop_previous_epoch).
    ///   Replay protection spans both keys (the windows are per SSRC, not per key).
    ///
    /// On error (bad key or salt length) the context is unchanged.
    pub fn rekey(&mut self, master_key: &[u8], master_salt: &[u8]) -> Result<(), Error> {
        let next = Epoch::new(self.suite, master_key, master_salt)?;
        let old = core::mem::replace(&mut self.current, next);
        self.previous = Some(old);
        self.since_rekey = 0;
        self.prefer_previous = false;
        self.epoch += 1;
        debug!(epoch = self.epoch, "srtp rekey: new key epoch");
        Ok(())
    }

    /// Stops accepting the previous epoch's key now (its keys are wiped). Returns whether there
    /// was one.
    pub fn drop_previous_epoch(&mut self) -> bool {
        self.prefer_previous = false;
        self.previous.take().is_some()
    }

    /// Protects an RTP packet in place: encrypts the payload and appends the 16-byte tag.
    ///
    /// The header (with CSRCs and header extension) stays in the clear and is authenticated.
    /// The packet index is estimated from the sequence number as RFC 3711 Appendix A says, so
    /// the rollover counter advances when the sequence number wraps. Fails with
    /// [`Error::IndexReused`] for an index already protected (or behind the replay window), and
    /// with [`Error::KeyExhausted`] at the packet limit.
    pub fn protect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), Error> {
        let hdr = parse_rtp(packet, 0)?;
        if self.current.srtp_sent >= self.config.srtp_packet_limit() {
            return Err(Error::KeyExhausted);
        }
        let slot = self.tx_rtp.find(hdr.ssrc);
        let index = match slot {
            Some(i) => {
                let window = &self.tx_rtp.entries[i].1;
                let index = estimate_index(window.max(), hdr.seq).ok_or(
                    // No index: either before the stream's start (ROC 0, sequence number far
                    // behind) or past the end of the 48-bit index space.
                    if window.max() >> 16 == 0 {
                        Error::IndexReused {
                            ssrc: hdr.ssrc,
                            index: u64::from(hdr.seq),
                        }
                    } else {
                        Error::KeyExhausted
                    },
                )?;
                window.check(index).map_err(|_| Error::IndexReused {
                    ssrc: hdr.ssrc,
                    index,
                })?;
                index
            }
            None => {
                self.current.check_not_retired(hdr.ssrc)?;
                self.tx_rtp.check_room(self.current.retired.len())?;
                u64::from(hdr.seq)
            }
        };
        let nonce = rtp_nonce(&self.current.keys.rtp_salt, hdr.ssrc, index);
        let (aad, body) = packet.split_at_mut(hdr.len);
        let tag = self.current.keys.rtp.seal(&nonce, aad, body)?;
        packet.extend_from_slice(&tag);
        match slot {
            Some(i) => self.tx_rtp.entries[i].1.accept(index),
            None => self.tx_rtp.entries.push((
                hdr.ssrc,
                ReplayWindow::new(self.config.replay_window(), index),
            )),
        }
        self.current.srtp_sent += 1;
        Ok(())
    }

    /// Unprotects an SRTP packet in place: authenticates it, checks it against the replay
    /// window, decrypts the payload and removes the tag.
    ///
    /// A packet of an SSRC not seen before starts a new stream with rollover counter 0 (RFC
    /// 3711 §3.3.1), once it authenticates.
    pub fn unprotect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), Error> {
        let hdr = parse_rtp(packet, TAG_LEN)?;
        let slot = self.rx_rtp.find(hdr.ssrc);
        let index = match slot {
            Some(i) => {
                let window = &self.rx_rtp.entries[i].1;
                let index = estimate_index(window.max(), hdr.seq).ok_or(Error::TooOld {
                    ssrc: hdr.ssrc,
                    index: u64::from(hdr.seq),
                })?;
                window
                    .check(index)
                    .map_err(|r| reject_error(r, hdr.ssrc, index))?;
                index
            }
            None => {
                self.rx_rtp.check_room(0)?;
                u64::from(hdr.seq)
            }
        };
        let tag_at = packet.len() - TAG_LEN;
        let (aad, rest) = packet.split_at_mut(hdr.len);
        let (body, tag) = rest.split_at_mut(tag_at - hdr.len);
        let tag: &[u8; TAG_LEN] = (&*tag)
            .try_into()
            .map_err(|_| Error::Internal("SRTP tag length"))?;
        let which = self.open(Kind::Rtp, hdr.ssrc, index, aad, body, tag)?;
        packet.truncate(tag_at);
        match slot {
            Some(i) => self.rx_rtp.entries[i].1.accept(index),
            None => {
                debug!(ssrc = hdr.ssrc, "srtp: new receive stream");
                self.rx_rtp.entries.push((
                    hdr.ssrc,
                    ReplayWindow::new(self.config.replay_window(), index),
                ));
            }
        }
        self.authenticated(which);
        Ok(())
    }

    /// Protects an RTCP (compound) packet in place: encrypts everything after the sender SSRC,
    /// then appends the 16-byte tag and the E flag with the 31-bit SRTCP index.
    ///
    /// The first SRTCP packet of an SSRC carries index 1 (as libsrtp does), each next one the
    /// index after it.
    pub fn protect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), Error> {
        let ssrc = parse_rtcp(packet, 0)?;
        if self.current.srtcp_sent >= self.config.srtcp_packet_limit() {
            return Err(Error::KeyExhausted);
        }
        let slot = self.tx_rtcp.find(ssrc);
        let index = match slot {
            Some(i) => {
                let last = self.tx_rtcp.entries[i].1;
                if last >= MAX_SRTCP_INDEX {
                    return Err(Error::KeyExhausted);
                }
                last + 1
            }
            None => {
                self.current.check_not_retired(ssrc)?;
                self.tx_rtcp.check_room(self.current.retired.len())?;
                1
            }
        };
        let trailer = (E_FLAG | index).to_be_bytes();
        let mut aad = [0u8; RTCP_HEADER + SRTCP_TRAILER];
        aad[..RTCP_HEADER].copy_from_slice(&packet[..RTCP_HEADER]);
        aad[RTCP_HEADER..].copy_from_slice(&trailer);
        let nonce = rtcp_nonce(&self.current.keys.rtcp_salt, ssrc, index);
        let tag = self
            .current
            .keys
            .rtcp
            .seal(&nonce, &aad, &mut packet[RTCP_HEADER..])?;
        packet.extend_from_slice(&tag);
        packet.extend_from_slice(&trailer);
        match slot {
            Some(i) => self.tx_rtcp.entries[i].1 = index,
            None => self.tx_rtcp.entries.push((ssrc, index)),
        }
        self.current.srtcp_sent += 1;
        Ok(())
    }

    /// Unprotects an SRTCP packet in place: authenticates it, checks the SRTCP index against
    /// the replay window, decrypts (when the E flag is set) and removes tag and trailer.
    ///
    /// Packets with the E flag clear (authenticated, not encrypted; RFC 7714 §9.2) are accepted
    /// too; this crate never sends them.
    pub fn unprotect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), Error> {
        let ssrc = parse_rtcp(packet, TAG_LEN + SRTCP_TRAILER)?;
        let len = packet.len();
        let trailer_at = len - SRTCP_TRAILER;
        let tag_at = trailer_at - TAG_LEN;
        let mut trailer = [0u8; SRTCP_TRAILER];
        trailer.copy_from_slice(&packet[trailer_at..]);
        let word = u32::from_be_bytes(trailer);
        let encrypted = word & E_FLAG != 0;
        let index = u64::from(word & MAX_SRTCP_INDEX);
        let slot = self.rx_rtcp.find(ssrc);
        match slot {
            Some(i) => self.rx_rtcp.entries[i]
                .1
                .check(index)
                .map_err(|r| reject_error(r, ssrc, index))?,
            None => self.rx_rtcp.check_room(0)?,
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&packet[tag_at..trailer_at]);
        let which = if encrypted {
            let mut aad = [0u8; RTCP_HEADER + SRTCP_TRAILER];
            aad[..RTCP_HEADER].copy_from_slice(&packet[..RTCP_HEADER]);
            aad[RTCP_HEADER..].copy_from_slice(&trailer);
            let body = &mut packet[RTCP_HEADER..tag_at];
            self.open(Kind::Rtcp, ssrc, index, &aad, body, &tag)?
        } else {
            // Nothing is encrypted: the whole RTCP packet and the trailer word are the AAD.
            let mut aad = core::mem::take(&mut self.scratch);
            aad.clear();
            aad.extend_from_slice(&packet[..tag_at]);
            aad.extend_from_slice(&trailer);
            let result = self.open(Kind::Rtcp, ssrc, index, &aad, &mut [], &tag);
            self.scratch = aad;
            result?
        };
        packet.truncate(tag_at);
        match slot {
            Some(i) => self.rx_rtcp.entries[i].1.accept(index),
            None => {
                debug!(ssrc, "srtcp: new receive stream");
                self.rx_rtcp
                    .entries
                    .push((ssrc, ReplayWindow::new(self.config.replay_window(), index)));
            }
        }
        self.authenticated(which);
        Ok(())
    }

    /// Authenticates and decrypts `body` under the current key, or the previous one during a
    /// key overlap, trying first the one that worked last.
    fn open(
        &mut self,
        kind: Kind,
        ssrc: u32,
        index: u64,
        aad: &[u8],
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<Which, Error> {
        let try_open = |keys: &SessionKeys, body: &mut [u8]| {
            let (aead, _) = keys.aead(kind);
            aead.open(&nonce(keys, kind, ssrc, index), aad, body, tag)
        };
        let Some(previous) = &self.previous else {
            try_open(&self.current.keys, body)?;
            return Ok(Which::Current);
        };
        let (first, second) = if self.prefer_previous {
            (
                (&previous.keys, Which::Previous),
                (&self.current.keys, Which::Current),
            )
        } else {
            (
                (&self.current.keys, Which::Current),
                (&previous.keys, Which::Previous),
            )
        };
        if !Aead::OPEN_PRESERVES_ON_FAILURE {
            self.scratch.clear();
            self.scratch.extend_from_slice(body);
        }
        match try_open(first.0, body) {
            Ok(()) => return Ok(first.1),
            Err(Error::AuthFailed) => {}
            Err(e) => return Err(e),
        }
        if !Aead::OPEN_PRESERVES_ON_FAILURE {
            body.copy_from_slice(&self.scratch);
        }
        try_open(second.0, body)?;
        Ok(second.1)
    }

    /// Bookkeeping after a packet authenticated: key preference and the end of a key overlap.
    fn authenticated(&mut self, which: Which) {
        if self.previous.is_none() {
            return;
        }
        match which {
            Which::Previous => self.prefer_previous = true,
            Which::Current => {
                self.prefer_previous = false;
                self.since_rekey += 1;
                if self.since_rekey >= self.config.rekey_grace_packets().max(1) {
                    self.previous = None;
                    debug!(epoch = self.epoch, "srtp rekey: previous key epoch dropped");
                }
            }
        }
    }
}

fn reject_error(r: Reject, ssrc: u32, index: u64) -> Error {
    match r {
        Reject::Replayed => Error::Replayed { ssrc, index },
        Reject::TooOld => Error::TooOld { ssrc, index },
    }
}

impl core::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SrtpContext")
            .field("suite", &self.suite)
            .field("keys", &"<redacted>")
            .field("epoch", &self.epoch)
            .field("previous_epoch", &self.previous.is_some())
            .field("tx_rtp_ssrcs", &self.tx_rtp.len())
            .field("rx_rtp_ssrcs", &self.rx_rtp.len())
            .field("tx_rtcp_ssrcs", &self.tx_rtcp.len())
            .field("rx_rtcp_ssrcs", &self.rx_rtcp.len())
            .field("config", &self.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7714 §16 / §17 print the IVs of their examples.
    #[test]
    fn rfc7714_ivs() {
        let salt: [u8; 12] = hex::decode("517569642070726f2071756f")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            hex::encode(rtp_nonce(&salt, 0x5501_a0b2, 0xf17b)),
            "51753c6580c2726f20718414"
        );
        assert_eq!(
            hex::encode(rtcp_nonce(&salt, 0x4d61_7273, 0x5d4)),
            "517524055203726f207170bb"
        );
    }

    /// At the end of the 48-bit index space (ROC 2^32 - 1, SEQ 0xffff) the sender stops.
    #[test]
    fn sender_stops_at_end_of_index_space() {
        let mut ctx = SrtpContext::new(Suite::AeadAes128Gcm, &[1; 16], &[2; 12]).unwrap();
        ctx.tx_rtp
            .entries
            .push((9, ReplayWindow::new(64, crate::replay::MAX_SRTP_INDEX - 1)));
        let mut p = vec![0x80, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 3];
        ctx.protect_rtp(&mut p).unwrap();
        assert_eq!(
            ctx.highest_rtp_index_sent(9),
            Some(crate::replay::MAX_SRTP_INDEX)
        );
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 3];
        assert_eq!(ctx.protect_rtp(&mut p), Err(Error::KeyExhausted));
    }

    /// The SRTCP index stops at 2^31 - 1.
    #[test]
    fn srtcp_index_space_ends() {
        let mut ctx = SrtpContext::new(Suite::AeadAes128Gcm, &[1; 16], &[2; 12]).unwrap();
        ctx.set_next_srtcp_index(9, MAX_SRTCP_INDEX);
        let mut p = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        ctx.protect_rtcp(&mut p).unwrap();
        assert_eq!(&p[p.len() - 4..], &[0xff, 0xff, 0xff, 0xff]);
        let mut p = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        assert_eq!(ctx.protect_rtcp(&mut p), Err(Error::KeyExhausted));
    }
}
