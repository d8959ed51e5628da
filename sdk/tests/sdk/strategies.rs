//! Every strategy against Flower 1.42's own results on the same inputs
//! (`tests/fixtures/strategies.json`, written by `scripts/strategy-fixtures` from Flower's
//! implementation): three rounds of aggregate_train, stateful strategies carrying their state from
//! round to round, then aggregate_evaluate; arrays and metrics within 1e-6. Each strategy is
//! checked twice: given every reply at once (`aggregate_train`), and given them one at a time
//! (`train_fold`, as the round loop does).

#![allow(clippy::unwrap_used)]

use flwr_sdk::strategy::{
    Bulyan, FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, FedYogi, Krum,
    MultiKrum, Strategy, StrategyError, TrainReply,
};
use serde_json::Value;
use wire::{Array, ArrayRecord, ConfigValue, MetricRecord, MetricValue};

const TOLERANCE: f64 = 1e-6;

fn fixtures() -> Value {
    let text = include_str!("../fixtures/strategies.json");
    serde_json::from_str(text).unwrap()
}

fn param(params: &Value, name: &str) -> Option<f64> {
    params.get(name).and_then(Value::as_f64)
}

fn strategy(name: &str, params: &Value) -> Box<dyn Strategy> {
    let count = |name: &str| param(params, name).map_or(0, |v| v as usize);
    match name {
        "FedAvg" => Box::new(FedAvg::default()),
        "FedProx" => Box::new(FedProx {
            proximal_mu: param(params, "proximal_mu").unwrap_or(0.0),
            ..FedProx::default()
        }),
        "FedAvgM" => Box::new(FedAvgM::new(
            param(params, "server_learning_rate").unwrap_or(1.0),
            param(params, "server_momentum").unwrap_or(0.0),
        )),
        "FedAdagrad" => Box::new(FedAdagrad::default()),
        "FedAdam" => Box::new(FedAdam::default()),
        "FedYogi" => Box::new(FedYogi::default()),
        "FedMedian" => Box::new(FedMedian::default()),
        "FedTrimmedAvg" => Box::new(FedTrimmedAvg {
            beta: param(params, "beta").unwrap_or(0.2),
            ..FedTrimmedAvg::default()
        }),
        "Krum" => Box::new(Krum {
            num_malicious_nodes: count("num_malicious_nodes"),
            ..Krum::default()
        }),
        "MultiKrum" => Box::new(MultiKrum {
            num_malicious_nodes: count("num_malicious_nodes"),
            num_nodes_to_select: param(params, "num_nodes_to_select").map_or(1, |v| v as usize),
            ..MultiKrum::default()
        }),
        "Bulyan" => Box::new(Bulyan {
            num_malicious_nodes: count("num_malicious_nodes"),
            ..Bulyan::default()
        }),
        other => panic!("no strategy {other}"),
    }
}

fn arrays(value: &Value) -> ArrayRecord {
    let mut record = ArrayRecord::new();
    for (name, array) in value.as_object().unwrap() {
        let shape: Vec<u64> = array["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let values: Vec<f32> = array["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        record.insert(name.clone(), Array::from_f32(shape, &values).unwrap());
    }
    record
}

fn metrics(value: &Value) -> MetricRecord {
    let mut record = MetricRecord::new();
    for (name, metric) in value.as_object().unwrap() {
        let metric = match metric {
            Value::Array(items) => {
                MetricValue::FloatList(items.iter().map(|v| v.as_f64().unwrap()).collect())
            }
            number if number.is_i64() => MetricValue::Int(number.as_i64().unwrap()),
            number => MetricValue::Float(number.as_f64().unwrap()),
        };
        record.insert(name.clone(), metric);
    }
    record
}

fn close(ours: f64, flower: f64) -> bool {
    (ours - flower).abs() <= TOLERANCE * flower.abs().max(1.0)
}

fn assert_arrays_match(ours: &ArrayRecord, expected: &Value, what: &str) {
    let expected = arrays(expected);
    assert_eq!(ours.len(), expected.len(), "{what}: array count");
    for (name, array) in expected.iter() {
        let mine = ours
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no {name}"));
        assert_eq!(mine.shape, array.shape, "{what}: {name} shape");
        for (index, (a, b)) in mine
            .to_f32()
            .unwrap()
            .iter()
            .zip(array.to_f32().unwrap())
            .enumerate()
        {
            assert!(
                close(f64::from(*a), f64::from(b)),
                "{what}: {name}[{index}] is {a}, Flower's {b}"
            );
        }
    }
}

fn assert_metrics_match(ours: &MetricRecord, expected: &Value, what: &str) {
    let expected = expected.as_object().unwrap();
    assert_eq!(ours.len(), expected.len(), "{what}: metric count {ours:?}");
    for (name, value) in expected {
        match (ours.get(name), value) {
            (Some(MetricValue::Float(a)), b) => {
                assert!(close(*a, b.as_f64().unwrap()), "{what}: {name} {a} vs {b}")
            }
            (Some(MetricValue::FloatList(a)), Value::Array(b)) => {
                assert_eq!(a.len(), b.len(), "{what}: {name}");
                for (a, b) in a.iter().zip(b) {
                    assert!(close(*a, b.as_f64().unwrap()), "{what}: {name} {a} vs {b}");
                }
            }
            (mine, theirs) => panic!("{what}: {name} is {mine:?}, Flower's {theirs}"),
        }
    }
}

/// How a test hands a round's replies to the strategy.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    AllAtOnce,
    OneAtATime,
}

fn aggregate(
    strategy: &mut dyn Strategy,
    delivery: Delivery,
    round: u64,
    current: ArrayRecord,
    replies: &[TrainReply<'_>],
) -> (ArrayRecord, MetricRecord) {
    match delivery {
        Delivery::AllAtOnce => strategy.aggregate_train(round, &current, replies).unwrap(),
        Delivery::OneAtATime => {
            let aggregated = {
                let mut fold = strategy.train_fold(round, &current).unwrap();
                for reply in replies {
                    fold.add(*reply).unwrap();
                }
                assert_eq!(fold.accepted(), replies.len());
                fold.finish().unwrap()
            };
            // As the round loop does: the next round's result may be written into it.
            strategy.recycle(current);
            aggregated
        }
    }
}

#[test]
fn every_strategy_agrees_with_flower_round_after_round() {
    agrees_with_flower(Delivery::AllAtOnce);
}

#[test]
fn every_strategy_agrees_with_flower_given_the_replies_one_at_a_time() {
    agrees_with_flower(Delivery::OneAtATime);
}

fn agrees_with_flower(delivery: Delivery) {
    let fixtures = fixtures();
    let cases = fixtures["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 13);
    for case in cases {
        let name = case["strategy"].as_str().unwrap();
        let what = format!("{name} {} {delivery:?}", case["params"]);
        let mut strategy = strategy(name, &case["params"]);
        assert_eq!(strategy.name(), name);
        for round in case["rounds"].as_array().unwrap() {
            let number = round["round"].as_u64().unwrap();
            let current = arrays(&round["current"]);
            let replies: Vec<(ArrayRecord, MetricRecord)> = round["replies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|reply| (arrays(&reply["arrays"]), metrics(&reply["metrics"])))
                .collect();
            let borrowed: Vec<TrainReply<'_>> = replies
                .iter()
                .map(|(arrays, metrics)| TrainReply { arrays, metrics })
                .collect();
            let (ours, our_metrics) =
                aggregate(strategy.as_mut(), delivery, number, current, &borrowed);
            let what = format!("{what}, round {number}");
            assert_arrays_match(&ours, &round["arrays"], &what);
            assert_metrics_match(&our_metrics, &round["metrics"], &what);
        }
        let evaluation: Vec<MetricRecord> = case["evaluate"]["replies"]
            .as_array()
            .unwrap()
            .iter()
            .map(metrics)
            .collect();
        let borrowed: Vec<&MetricRecord> = evaluation.iter().collect();
        let evaluated = strategy.aggregate_evaluate(&borrowed).unwrap();
        assert_metrics_match(
            &evaluated,
            &case["evaluate"]["metrics"],
            &format!("{what}, evaluate"),
        );
    }
}

#[test]
fn fedprox_sends_its_mu_and_bulyan_refuses_too_few_replies() {
    let prox = FedProx {
        proximal_mu: 0.25,
        ..FedProx::default()
    };
    assert_eq!(
        prox.train_config().get("proximal-mu"),
        Some(&ConfigValue::Float(0.25))
    );
    let one = ArrayRecord::new().with("w", Array::from_f32(vec![1], &[1.0]).unwrap());
    let weight = MetricRecord::new().with("num-examples", MetricValue::Int(1));
    let replies = vec![
        TrainReply {
            arrays: &one,
            metrics: &weight,
        };
        6
    ];
    let mut bulyan = Bulyan {
        num_malicious_nodes: 1,
        ..Bulyan::default()
    };
    assert!(matches!(
        bulyan.aggregate_train(1, &one, &replies),
        Err(flwr_sdk::strategy::StrategyError::TooFewReplies {
            needed: 7,
            got: 6,
            ..
        })
    ));
}

#[test]
fn a_reply_whose_bytes_disagree_with_its_shape_is_an_error_not_a_panic() {
    let good = ArrayRecord::new().with("w", Array::from_f32(vec![2], &[1.0, 2.0]).unwrap());
    let mut lying = good.clone();
    lying.get_mut("w").unwrap().shape = vec![3];
    let weight = MetricRecord::new().with("num-examples", MetricValue::Int(1));
    for first in [&lying, &good] {
        let replies = [
            TrainReply {
                arrays: first,
                metrics: &weight,
            },
            TrainReply {
                arrays: &lying,
                metrics: &weight,
            },
        ];
        for mut strategy in [
            Box::new(FedAvg::default()) as Box<dyn Strategy>,
            Box::new(FedMedian::default()),
            Box::new(MultiKrum::default()),
        ] {
            assert!(matches!(
                strategy.aggregate_train(1, &good, &replies),
                Err(flwr_sdk::strategy::StrategyError::Inconsistent(_))
            ));
        }
    }
}

/// A record of two named arrays, in the order given.
fn pair(order: [(&str, &[f32]); 2]) -> ArrayRecord {
    let mut record = ArrayRecord::new();
    for (name, values) in order {
        record.insert(
            name,
            Array::from_f32(vec![values.len() as u64], values).unwrap(),
        );
    }
    record
}

fn reply<'a>(arrays: &'a ArrayRecord, metrics: &'a MetricRecord) -> TrainReply<'a> {
    TrainReply { arrays, metrics }
}

#[test]
fn stateful_strategies_match_arrays_by_name_and_refuse_a_changed_model() {
    let weight = MetricRecord::new().with("num-examples", MetricValue::Int(1));
    let current = pair([("a", &[0.0, 0.0]), ("b", &[0.0, 0.0, 0.0])]);
    let forward = pair([("a", &[1.0, 2.0]), ("b", &[3.0, 4.0, 5.0])]);
    let backward = pair([("b", &[3.0, 4.0, 5.0]), ("a", &[1.0, 2.0])]);
    let makers: [fn() -> Box<dyn Strategy>; 2] = [
        || Box::new(FedAdam::default()),
        || Box::new(FedAvgM::new(0.5, 0.9)),
    ];
    for make in makers {
        let (mut straight, mut swapped) = (make(), make());
        for round in 1..=2 {
            let (a, _) = straight
                .aggregate_train(round, &current, &[reply(&forward, &weight)])
                .unwrap();
            let (b, _) = swapped
                .aggregate_train(
                    round,
                    &current,
                    &[reply(&backward, &weight), reply(&forward, &weight)],
                )
                .unwrap();
            assert_eq!(a, b, "{} round {round}", straight.name());
        }
        let grown = pair([("a", &[0.0, 0.0, 0.0]), ("b", &[0.0, 0.0, 0.0])]);
        let longer = pair([("a", &[1.0, 2.0, 3.0]), ("b", &[3.0, 4.0, 5.0])]);
        assert!(matches!(
            straight.aggregate_train(3, &grown, &[reply(&longer, &weight)]),
            Err(flwr_sdk::strategy::StrategyError::Inconsistent(_))
        ));
    }
}

#[test]
fn a_reply_holding_nan_is_never_the_one_krum_keeps() {
    let weight = MetricRecord::new().with("num-examples", MetricValue::Int(1));
    let honest: Vec<ArrayRecord> = (0..4)
        .map(|i| {
            pair([
                ("a", &[1.0 + i as f32 * 0.01, 1.0]),
                ("b", &[1.0, 1.0, 1.0]),
            ])
        })
        .collect();
    let poisoned = pair([("a", &[-f32::NAN, 1.0]), ("b", &[1.0, 1.0, 1.0])]);
    let mut replies = vec![TrainReply {
        arrays: &poisoned,
        metrics: &weight,
    }];
    replies.extend(honest.iter().map(|arrays| TrainReply {
        arrays,
        metrics: &weight,
    }));
    let (kept, _) = Krum::default()
        .aggregate_train(1, &honest[0], &replies)
        .unwrap();
    assert!(
        kept.get("a")
            .unwrap()
            .to_f32()
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
}

#[test]
fn replies_whose_metrics_differ_are_refused_as_flower_refuses_them() {
    let arrays = pair([("a", &[1.0, 2.0]), ("b", &[3.0, 4.0, 5.0])]);
    let plain = MetricRecord::new().with("num-examples", MetricValue::Int(1));
    let extra = plain.clone().with("accuracy", MetricValue::Float(0.5));
    let short = plain
        .clone()
        .with("losses", MetricValue::FloatList(vec![1.0]));
    let long = plain
        .clone()
        .with("losses", MetricValue::FloatList(vec![1.0, 2.0]));
    for (first, second) in [(&plain, &extra), (&extra, &plain), (&short, &long)] {
        let replies = [
            TrainReply {
                arrays: &arrays,
                metrics: first,
            },
            TrainReply {
                arrays: &arrays,
                metrics: second,
            },
        ];
        assert!(matches!(
            FedAvg::default().aggregate_train(1, &arrays, &replies),
            Err(flwr_sdk::strategy::StrategyError::Inconsistent(_))
        ));
    }
    let mut bulyan = Bulyan {
        num_malicious_nodes: usize::MAX,
        ..Bulyan::default()
    };
    let one = [TrainReply {
        arrays: &arrays,
        metrics: &plain,
    }];
    assert!(matches!(
        bulyan.aggregate_train(1, &arrays, &one),
        Err(flwr_sdk::strategy::StrategyError::Parameter(_))
    ));
}

fn sample_reply(values: &[f32], examples: i64) -> (ArrayRecord, MetricRecord) {
    let arrays = ArrayRecord::new().with(
        "w",
        Array::from_f32(vec![values.len() as u64], values).unwrap(),
    );
    let metrics = MetricRecord::new()
        .with("num-examples", MetricValue::Int(examples))
        .with("loss", MetricValue::Float(0.5));
    (arrays, metrics)
}

/// Folds `replies` into `strategy` for a round that sent out `current`; returns the result and
/// each reply's refusal, if any.
fn fold_all(
    strategy: &mut dyn Strategy,
    current: &ArrayRecord,
    replies: &[(ArrayRecord, MetricRecord)],
) -> ((ArrayRecord, MetricRecord), Vec<Option<StrategyError>>) {
    let mut fold = strategy.train_fold(1, current).unwrap();
    let refusals = replies
        .iter()
        .map(|(arrays, metrics)| fold.add(TrainReply { arrays, metrics }).err())
        .collect();
    (fold.finish().unwrap(), refusals)
}

fn strategies_that_fold() -> Vec<Box<dyn Strategy>> {
    vec![
        Box::new(FedAvg::default()),
        Box::new(FedProx::default()),
        Box::new(FedMedian::default()),
        Box::new(FedAvgM::new(1.0, 0.0)),
    ]
}

#[test]
fn a_bad_reply_is_left_out_whenever_it_arrives_and_the_round_goes_on() {
    let good = [sample_reply(&[1.0, 2.0], 1), sample_reply(&[4.0, 8.0], 3)];
    let current = good[0].0.clone();
    let bad = [
        sample_reply(&[1.0, 2.0, 3.0], 2),
        (
            good[0].0.clone(),
            MetricRecord::new().with("loss", MetricValue::Float(0.5)),
        ),
        sample_reply(&[f32::NAN, 1.0], 2),
        sample_reply(&[1.0, 1.0], 0),
    ];
    for mut strategy in strategies_that_fold() {
        let name = strategy.name();
        let (expected, _) = fold_all(strategy.as_mut(), &current, &good);
        // Bad replies first, where they would set the standard for the others if they could.
        let mixed: Vec<_> = bad.iter().chain(&good).cloned().collect();
        let (got, refusals) = fold_all(strategy.as_mut(), &current, &mixed);
        assert_eq!(got, expected, "{name}");
        let refused: Vec<bool> = refusals.iter().map(Option::is_some).collect();
        assert_eq!(refused, [true, true, true, true, false, false], "{name}");
        assert!(
            refusals[2]
                .as_ref()
                .is_some_and(StrategyError::is_not_finite),
            "{name}"
        );
    }
}

#[test]
fn metrics_are_averaged_over_the_names_every_reply_shares() {
    let (arrays, metrics) = sample_reply(&[1.0, 2.0], 1);
    let odd = (arrays, metrics.with("odd", MetricValue::Float(9.0)));
    let replies = [odd, sample_reply(&[4.0, 8.0], 3)];
    for mut strategy in strategies_that_fold() {
        let name = strategy.name();
        let (aggregated, refusals) = fold_all(strategy.as_mut(), &replies[1].0, &replies);
        assert!(refusals.iter().all(Option::is_none), "{name}");
        assert_eq!(
            aggregated.1.get("loss"),
            Some(&MetricValue::Float(0.5)),
            "{name}"
        );
        assert_eq!(aggregated.1.get("odd"), None, "{name}");
    }
    let (mean, _) = fold_all(&mut FedAvg::default(), &replies[1].0, &replies).0;
    assert_eq!(mean.get("w").unwrap().to_f32().unwrap(), [3.25, 6.5]);
}

#[test]
fn fedavg_folds_a_reply_whose_arrays_come_in_another_order() {
    let pair = |a: f32, b: f32| {
        ArrayRecord::new()
            .with("a", Array::from_f32(vec![1], &[a]).unwrap())
            .with("b", Array::from_f32(vec![1], &[b]).unwrap())
    };
    let weight = MetricRecord::new().with("num-examples", MetricValue::Int(1));
    let swapped = ArrayRecord::new()
        .with("b", Array::from_f32(vec![1], &[4.0]).unwrap())
        .with("a", Array::from_f32(vec![1], &[3.0]).unwrap());
    let replies = [(pair(1.0, 2.0), weight.clone()), (swapped, weight)];
    let ((mean, _), refusals) = fold_all(&mut FedAvg::default(), &pair(0.0, 0.0), &replies);
    assert!(refusals.iter().all(Option::is_none));
    assert_eq!(mean, pair(2.0, 3.0));
}
