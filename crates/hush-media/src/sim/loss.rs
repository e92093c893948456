//! Loss models: independent random loss and Gilbert–Elliott burst loss.

use super::rng::SimRng;

/// How the simulated link loses packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossModel {
    /// No loss.
    None,
    /// Each packet is lost independently with this probability.
    Random(f64),
    /// Two-state Markov chain (Gilbert–Elliott). Per packet, the chain first moves (good → bad
    /// with `p_enter_bad`, bad → good with `p_leave_bad`), then the packet is lost with the
    /// state's loss probability. Mean burst length in the bad state is `1 / p_leave_bad`.
    GilbertElliott {
        /// Probability of moving from the good to the bad state.
        p_enter_bad: f64,
        /// Probability of moving from the bad to the good state.
        p_leave_bad: f64,
        /// Loss probability in the good state.
        loss_good: f64,
        /// Loss probability in the bad state.
        loss_bad: f64,
    },
}

impl LossModel {
    /// A Gilbert–Elliott model with the given mean loss rate and mean burst length (in packets),
    /// losing every packet in the bad state and none in the good state.
    pub fn bursty(mean_loss: f64, mean_burst: f64) -> Self {
        let p_leave_bad = 1.0 / mean_burst.max(1.0);
        let mean_loss = mean_loss.clamp(0.0, 0.99);
        // Stationary P(bad) = p_enter / (p_enter + p_leave) = mean_loss.
        let p_enter_bad = mean_loss * p_leave_bad / (1.0 - mean_loss);
        Self::GilbertElliott {
            p_enter_bad,
            p_leave_bad,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// Long-run loss rate of the model.
    pub fn mean_loss(&self) -> f64 {
        match *self {
            Self::None => 0.0,
            Self::Random(p) => p,
            Self::GilbertElliott {
                p_enter_bad,
                p_leave_bad,
                loss_good,
                loss_bad,
            } => {
                let sum = p_enter_bad + p_leave_bad;
                if sum <= 0.0 {
                    return loss_good;
                }
                let bad = p_enter_bad / sum;
                bad * loss_bad + (1.0 - bad) * loss_good
            }
        }
    }
}

/// The running state of a [`LossModel`].
#[derive(Debug, Clone)]
pub(crate) struct LossState {
    model: LossModel,
    bad: bool,
}

impl LossState {
    pub(crate) fn new(model: LossModel) -> Self {
        Self { model, bad: false }
    }

    pub(crate) fn set_model(&mut self, model: LossModel) {
        self.model = model;
    }

    /// Whether the next packet is lost.
    pub(crate) fn lose(&mut self, rng: &mut SimRng) -> bool {
        match self.model {
            LossModel::None => false,
            LossModel::Random(p) => rng.chance(p),
            LossModel::GilbertElliott {
                p_enter_bad,
                p_leave_bad,
                loss_good,
                loss_bad,
            } => {
                let flip = if self.bad { p_leave_bad } else { p_enter_bad };
                if rng.chance(flip) {
                    self.bad = !self.bad;
                }
                rng.chance(if self.bad { loss_bad } else { loss_good })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursty_model_has_requested_mean_and_bursts() {
        let model = LossModel::bursty(0.1, 4.0);
        assert!((model.mean_loss() - 0.1).abs() < 1e-9);
        let mut st = LossState::new(model);
        let mut rng = SimRng::new(7);
        let losses: Vec<bool> = (0..200_000).map(|_| st.lose(&mut rng)).collect();
        let lost = losses.iter().filter(|&&l| l).count() as f64;
        assert!((lost / 200_000.0 - 0.1).abs() < 0.01);
        let bursts = losses.windows(2).filter(|w| w[1] && !w[0]).count() as f64;
        let mean_burst = lost / bursts;
        assert!((3.5..4.5).contains(&mean_burst), "{mean_burst}");
    }
}
