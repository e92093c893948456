//! Members of a group video call through hush-sfu's sans-IO core in the test's own process (no
//! sockets, the test's clock): real signed joins and hop keys, and on each member a
//! `GroupMediaPath` with SFrame keys in the roster's slots. Member 0 creates the call and
//! sends a three-layer camera; the others receive it.

use std::time::Instant;

use hush::group_path::{GroupMediaPath, SframeCrypto};
use hush_crypto::group::{GroupCallId, GroupE2ee, MemberSlot};
use hush_media::jitter::JitterConfig;
use hush_sfu::ed25519_dalek::SigningKey;
use hush_sfu::join::{JoinAnswer, JoinParams, PendingJoin, StreamDecl};
use hush_sfu::roster::Roster;
use hush_sfu::{CallId, DeviceId, LegId, Sfu};
use hush_srtp::Suite;

/// The wall clock the joins are signed at (milliseconds since the Unix epoch).
pub(crate) const T0_MS: u64 = 1_780_000_000_000;
/// Heights of the sender's three layers, smallest first (16:9).
pub(crate) const HEIGHTS: [u16; 3] = [90, 180, 360];

/// One call's fixed identities: which call, whose keys, which SSRCs.
pub(crate) struct CoreCall {
    /// The call id's bytes.
    pub(crate) call: [u8; 16],
    /// Member `i`'s device key is 32 bytes of `key_seed + i`.
    pub(crate) key_seed: u8,
    /// Member `i` sends its audio (and RTCP) under `audio_ssrc_base + i`.
    pub(crate) audio_ssrc_base: u32,
    /// The SSRCs of member 0's three layers, smallest first.
    pub(crate) layers: [u32; 3],
}

impl CoreCall {
    /// Member `i`'s device key.
    pub(crate) fn key(&self, i: usize) -> SigningKey {
        SigningKey::from_bytes(&[self.key_seed + i as u8; 32])
    }

    /// Member `i`'s device id.
    pub(crate) fn device(&self, i: usize) -> DeviceId {
        DeviceId::from_signing_key(&self.key(i))
    }

    /// The roster of members `0..n`, signed by member 0.
    pub(crate) fn roster(&self, n: usize) -> Roster {
        let devices: Vec<DeviceId> = (0..n).map(|i| self.device(i)).collect();
        Roster::sign(&self.key(0), CallId::from_bytes(self.call), 1, &devices).unwrap()
    }

    /// Joins member `i` to `sfu` at `now` (member 0 hands in `roster` as the call's creator)
    /// and builds its media path: member 0 sends the three layers, the others receive member
    /// 0's video under its layer-0 SSRC. Sender keys are not exchanged here.
    pub(crate) fn join(
        &self,
        sfu: &mut Sfu,
        now: Instant,
        roster: &Roster,
        i: usize,
    ) -> (LegId, GroupMediaPath<SframeCrypto>) {
        let mut rng = rand::rng();
        let audio_ssrc = self.audio_ssrc_base + i as u32;
        let mut streams = vec![StreamDecl::audio(audio_ssrc)];
        if i == 0 {
            streams.extend(StreamDecl::simulcast(
                0,
                self.layers
                    .iter()
                    .zip(&HEIGHTS)
                    .map(|(&s, &h)| (s, h / 9 * 16, h)),
            ));
        }
        let params = JoinParams {
            call_id: CallId::from_bytes(self.call),
            suite: Suite::AeadAes128Gcm,
            audio_level_ext: Some(1),
            streams,
        };
        let (pending, request) = PendingJoin::new(&self.key(i), &params, T0_MS, &mut rng).unwrap();
        let creator = (i == 0).then(|| roster.encode());
        let joined = sfu
            .handle_join(now, T0_MS, &request.encode(), creator.as_deref(), &mut rng)
            .unwrap();
        let answer = JoinAnswer::decode(&joined.answer).unwrap();
        let keys = pending.finish(&sfu.public_key(), &answer).unwrap();
        let slot = roster.slot(&self.device(i)).unwrap();
        let e2ee = GroupE2ee::new(GroupCallId(self.call), MemberSlot(slot), &mut rng).unwrap();
        let mut crypto = SframeCrypto::new(e2ee);
        for (d, s) in roster.slots() {
            assert!(crypto.assign_slot(d, MemberSlot(s)));
        }
        let mut path =
            GroupMediaPath::new(&keys, audio_ssrc, crypto, JitterConfig::default(), 1000).unwrap();
        if i == 0 {
            for (l, &ssrc) in self.layers.iter().enumerate() {
                // The rates of hush's own layers (`GROUP_VIDEO_LAYERS`).
                let bps = [100_000, 300_000, 800_000][l.min(2)];
                path.add_video_layer(ssrc, l as u8, bps).unwrap();
            }
        } else {
            path.add_video_stream(self.device(0), self.layers[0]);
        }
        (joined.leg, path)
    }
}
