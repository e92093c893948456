//! Fuzzes hush-crypto's call payload parsers (`Offer::decode`, `Answer::decode`) and feeds
//! whatever parses into the key exchange: the callee's `receive_offer`/`accept` and the
//! caller's `PendingOffer::finish`. Nothing may panic; a parsed payload must re-encode to the
//! same bytes.
#![no_main]

use hush_crypto::rand::rngs::StdRng;
use hush_crypto::rand::SeedableRng;
use hush_crypto::signal::IdentityKeyPair;
use hush_crypto::{Answer, CallKeyExchange, Offer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rng = StdRng::seed_from_u64(1);
    let caller_id = *IdentityKeyPair::generate(&mut rng).identity_key();
    let callee_id = *IdentityKeyPair::generate(&mut rng).identity_key();

    if let Ok(offer) = Offer::decode(data) {
        assert_eq!(offer.encode(), data, "offer re-encodes to the same bytes");
        let mut callee = CallKeyExchange::new(callee_id);
        if let Ok(incoming) = callee.receive_offer(&offer, &caller_id) {
            let _ = incoming.accept(&mut rng);
            assert!(
                callee.receive_offer(&offer, &caller_id).is_err(),
                "replay refused"
            );
        }
    }
    if let Ok(answer) = Answer::decode(data) {
        assert_eq!(answer.encode(), data, "answer re-encodes to the same bytes");
        let caller = CallKeyExchange::new(caller_id);
        // A different RNG stream from the seed generator's, so the seed answer in the corpus
        // (a real answer to that generator's offer) does not answer this offer.
        let mut offer_rng = StdRng::seed_from_u64(2);
        let (mut pending, _offer) = caller.offer(&callee_id, &mut offer_rng);
        // An answer the fuzzer made up must never complete the exchange.
        assert!(pending.finish(&answer).is_err());
    }
});
