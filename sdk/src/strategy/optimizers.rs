//! Server-side optimisers on top of the weighted mean: FedAvgM (momentum) and the FedOpt family
//! (FedAdagrad, FedAdam, FedYogi; Reddi et al., "Adaptive Federated Optimization"). Each keeps its
//! state (momentum, first and second moments) from one round to the next, as Flower's do.

use super::weighted::FedAvg;
use super::{Layers, Strategy, StrategyError, TrainReply, Values};
use wire::{ArrayRecord, MetricRecord};

/// The names and shapes a strategy's state was built for.
type Layout = Vec<(String, Vec<u64>)>;

/// The current model's layout, which a strategy keeping state per array works in (its arrays
/// are matched by name, as Flower's are); refused if it is not the layout `state` was built for.
fn layout_for<T>(
    current: &ArrayRecord,
    state: Option<&(Layout, T)>,
) -> Result<Layers, StrategyError> {
    let layout = Layers::of(current)?;
    if let Some((built_for, _)) = state
        && *built_for != layout.layout()
    {
        return Err(StrategyError::Inconsistent(
            "the model's arrays changed since the strategy's last round".into(),
        ));
    }
    Ok(layout)
}

/// FedAvg with server momentum: the pseudo-gradient `current - mean` goes through a momentum
/// buffer (started at the first pseudo-gradient) and is applied with a server learning rate.
/// With the defaults (rate 1, momentum 0) it is FedAvg.
#[derive(Debug, Clone, PartialEq)]
pub struct FedAvgM {
    /// The averaging.
    pub fedavg: FedAvg,
    /// Flower's `server_learning_rate` (1.0).
    pub server_learning_rate: f64,
    /// Flower's `server_momentum` (0.0; a negative value means none).
    pub server_momentum: f64,
    /// The momentum buffer and the layout it is for, once a round has run.
    momentum: Option<(Layout, Values)>,
}

impl Default for FedAvgM {
    fn default() -> Self {
        FedAvgM {
            fedavg: FedAvg::default(),
            server_learning_rate: 1.0,
            server_momentum: 0.0,
            momentum: None,
        }
    }
}

impl FedAvgM {
    /// FedAvgM with this server learning rate and momentum.
    pub fn new(server_learning_rate: f64, server_momentum: f64) -> Self {
        FedAvgM {
            server_learning_rate,
            server_momentum,
            ..FedAvgM::default()
        }
    }
}

impl Strategy for FedAvgM {
    fn weighted_by_key(&self) -> &str {
        &self.fedavg.weighted_by_key
    }

    fn name(&self) -> &'static str {
        "FedAvgM"
    }

    fn aggregate_train(
        &mut self,
        _round: u64,
        current: &ArrayRecord,
        replies: &[TrainReply<'_>],
    ) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
        if self.server_momentum == 0.0 && self.server_learning_rate == 1.0 {
            let (layers, mean, metrics) = self.fedavg.mean(replies)?;
            return Ok((layers.record(mean)?, metrics));
        }
        let layers = layout_for(current, self.momentum.as_ref())?;
        let (mean, metrics) = self.fedavg.mean_in(&layers, replies)?;
        let old = &layers.values;
        let mut gradient: Vec<Vec<f32>> = old
            .iter()
            .zip(&mean)
            .map(|(o, n)| o.iter().zip(n).map(|(o, n)| o - n).collect())
            .collect();
        if self.server_momentum > 0.0 {
            let mu = self.server_momentum as f32;
            let momentum = match self.momentum.take() {
                None => gradient,
                Some((_, previous)) => previous
                    .iter()
                    .zip(&gradient)
                    .map(|(m, g)| m.iter().zip(g).map(|(m, g)| mu * m + g).collect())
                    .collect(),
            };
            gradient = momentum.clone();
            self.momentum = Some((layers.layout(), momentum));
        }
        let rate = self.server_learning_rate as f32;
        let next = old
            .iter()
            .zip(&gradient)
            .map(|(o, g)| o.iter().zip(g).map(|(o, g)| o - rate * g).collect())
            .collect();
        Ok((layers.record(next)?, metrics))
    }
}

/// A moment estimate per array element, in the layout's order.
type Moments = Vec<Vec<f64>>;

/// Which second-moment rule a FedOpt strategy uses.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    Adagrad,
    Adam,
    Yogi,
}

/// The FedOpt family's parameters and state: `delta = mean - current`, a first moment
/// `m = beta_1 m + (1 - beta_1) delta` and a second moment per `Rule`, both starting at zero;
/// the next global is `current + eta m / (sqrt(v) + tau)`.
#[derive(Debug, Clone, PartialEq)]
struct FedOpt {
    fedavg: FedAvg,
    eta: f64,
    eta_l: f64,
    beta_1: f64,
    beta_2: f64,
    tau: f64,
    rule: Rule,
    /// The layout and the first and second moments, once a round has run (f64: FedAdam's step
    /// is f64 in Flower too).
    moments: Option<(Layout, (Moments, Moments))>,
}

/// numpy's sign: 0 at 0 (Rust's `signum` gives 1).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

impl FedOpt {
    fn aggregate(
        &mut self,
        round: u64,
        current: &ArrayRecord,
        replies: &[TrainReply<'_>],
    ) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
        let layers = layout_for(current, self.moments.as_ref())?;
        let (mean, metrics) = self.fedavg.mean_in(&layers, replies)?;
        let old = &layers.values;
        let delta: Vec<Vec<f64>> = mean
            .iter()
            .zip(old)
            .map(|(n, o)| {
                n.iter()
                    .zip(o)
                    .map(|(&n, &o)| f64::from(n) - f64::from(o))
                    .collect()
            })
            .collect();
        let (mut m, mut v) = self.moments.take().map_or_else(
            || {
                let zeros: Moments = delta.iter().map(|d| vec![0.0; d.len()]).collect();
                (zeros.clone(), zeros)
            },
            |(_, moments)| moments,
        );
        let (beta_1, beta_2) = (self.beta_1, self.beta_2);
        for ((m, v), d) in m.iter_mut().zip(v.iter_mut()).zip(&delta) {
            for ((m, v), &d) in m.iter_mut().zip(v.iter_mut()).zip(d) {
                *m = beta_1 * *m + (1.0 - beta_1) * d;
                let d2 = d * d;
                *v = match self.rule {
                    Rule::Adagrad => *v + d2,
                    Rule::Adam => beta_2 * *v + (1.0 - beta_2) * d2,
                    Rule::Yogi => *v - (1.0 - beta_2) * d2 * sign(*v - d2),
                };
            }
        }
        let eta = match self.rule {
            // Bias correction in the step size only, with Flower's exponent (round + 1).
            Rule::Adam => {
                let t = round as f64 + 1.0;
                self.eta * (1.0 - beta_2.powf(t)).sqrt() / (1.0 - beta_1.powf(t))
            }
            Rule::Adagrad | Rule::Yogi => self.eta,
        };
        let next = old
            .iter()
            .zip(m.iter().zip(&v))
            .map(|(x, (m, v))| {
                x.iter()
                    .zip(m.iter().zip(v))
                    .map(|(&x, (m, v))| (f64::from(x) + eta * m / (v.sqrt() + self.tau)) as f32)
                    .collect()
            })
            .collect();
        self.moments = Some((layers.layout(), (m, v)));
        Ok((layers.record(next)?, metrics))
    }
}

macro_rules! fedopt_strategy {
    ($(#[$doc:meta])* $name:ident, $rule:expr, eta = $eta:expr, eta_l = $eta_l:expr,
     beta_1 = $beta_1:expr, beta_2 = $beta_2:expr, tau = $tau:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name(FedOpt);

        impl Default for $name {
            fn default() -> Self {
                $name(FedOpt {
                    fedavg: FedAvg::default(),
                    eta: $eta,
                    eta_l: $eta_l,
                    beta_1: $beta_1,
                    beta_2: $beta_2,
                    tau: $tau,
                    rule: $rule,
                    moments: None,
                })
            }
        }

        impl $name {
            /// The server learning rate (Flower's `eta`).
            pub fn with_eta(mut self, eta: f64) -> Self {
                self.0.eta = eta;
                self
            }

            /// The nodes' learning rate Flower records (`eta_l`); like Flower, unused here.
            pub fn eta_l(&self) -> f64 {
                self.0.eta_l
            }

            /// The adaptivity constant (Flower's `tau`).
            pub fn with_tau(mut self, tau: f64) -> Self {
                self.0.tau = tau;
                self
            }
        }

        impl Strategy for $name {
            fn weighted_by_key(&self) -> &str {
                &self.0.fedavg.weighted_by_key
            }

            fn name(&self) -> &'static str {
                stringify!($name)
            }

            fn aggregate_train(
                &mut self,
                round: u64,
                current: &ArrayRecord,
                replies: &[TrainReply<'_>],
            ) -> Result<(ArrayRecord, MetricRecord), StrategyError> {
                self.0.aggregate(round, current, replies)
            }
        }
    };
}

fedopt_strategy!(
    /// FedAdagrad: the second moment sums squared deltas. Flower's defaults: eta 0.1,
    /// eta_l 0.1, tau 1e-3.
    FedAdagrad, Rule::Adagrad, eta = 1e-1, eta_l = 1e-1, beta_1 = 0.0, beta_2 = 0.0, tau = 1e-3
);
fedopt_strategy!(
    /// FedAdam: Adam's moments on the deltas, bias-corrected in the step size. Flower's
    /// defaults: eta 0.1, eta_l 0.1, beta_1 0.9, beta_2 0.99, tau 1e-3.
    FedAdam, Rule::Adam, eta = 1e-1, eta_l = 1e-1, beta_1 = 0.9, beta_2 = 0.99, tau = 1e-3
);
fedopt_strategy!(
    /// FedYogi: Yogi's additive second moment. Flower's defaults: eta 0.01, eta_l 0.0316,
    /// beta_1 0.9, beta_2 0.99, tau 1e-3.
    FedYogi, Rule::Yogi, eta = 1e-2, eta_l = 0.0316, beta_1 = 0.9, beta_2 = 0.99, tau = 1e-3
);

impl FedAdam {
    /// The moments' decay rates (Flower's `beta_1`, `beta_2`).
    pub fn with_betas(mut self, beta_1: f64, beta_2: f64) -> Self {
        self.0.beta_1 = beta_1;
        self.0.beta_2 = beta_2;
        self
    }
}

impl FedYogi {
    /// The moments' decay rates (Flower's `beta_1`, `beta_2`).
    pub fn with_betas(mut self, beta_1: f64, beta_2: f64) -> Self {
        self.0.beta_1 = beta_1;
        self.0.beta_2 = beta_2;
        self
    }
}
