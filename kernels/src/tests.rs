//! The kernels against the definition: a direct convolution, ReLU and pooling written as loops,
//! its gradients written as loops, and finite differences.

use crate::conv_pool::{self, ConvPoolShape, NO_WINNER};

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

struct Case {
    input: [usize; 4],
    weight: [usize; 4],
}

impl Case {
    fn shape(&self) -> ConvPoolShape {
        ConvPoolShape::new(self.input, self.weight).expect("a valid shape")
    }
}

const CASES: [Case; 5] = [
    // The seed's first block on CIFAR-10 and its second, then odd sizes and a batch that does not
    // split evenly.
    Case {
        input: [4, 3, 32, 32],
        weight: [6, 3, 5, 5],
    },
    Case {
        input: [3, 6, 14, 14],
        weight: [16, 6, 5, 5],
    },
    Case {
        input: [5, 2, 9, 12],
        weight: [3, 2, 3, 4],
    },
    Case {
        input: [1, 1, 3, 3],
        weight: [2, 1, 2, 2],
    },
    Case {
        input: [2, 3, 6, 7],
        weight: [4, 3, 1, 1],
    },
];

/// The convolution plus bias, before ReLU and pooling, by its definition.
fn direct_conv(
    [batch, channels, height, width]: [usize; 4],
    [outs, _, kh, kw]: [usize; 4],
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let (ch, cw) = (height - kh + 1, width - kw + 1);
    let mut conv = vec![0.0f32; batch * outs * ch * cw];
    for b in 0..batch {
        for o in 0..outs {
            for y in 0..ch {
                for x in 0..cw {
                    let mut sum = bias[o];
                    for c in 0..channels {
                        for i in 0..kh {
                            for j in 0..kw {
                                sum += input[((b * channels + c) * height + y + i) * width + x + j]
                                    * weight[((o * channels + c) * kh + i) * kw + j];
                            }
                        }
                    }
                    conv[((b * outs + o) * ch + y) * cw + x] = sum;
                }
            }
        }
    }
    conv
}

/// ReLU then 2x2 max pooling of [`direct_conv`]'s output, with the flat index of each winner.
fn relu_pool([batch, outs, ch, cw]: [usize; 4], conv: &[f32]) -> (Vec<f32>, Vec<Option<usize>>) {
    let (ph, pw) = (ch / 2, cw / 2);
    let mut output = Vec::new();
    let mut winners = Vec::new();
    for b in 0..batch {
        for o in 0..outs {
            for y in 0..ph {
                for x in 0..pw {
                    let plane = (b * outs + o) * ch * cw;
                    let window = [
                        plane + 2 * y * cw + 2 * x,
                        plane + 2 * y * cw + 2 * x + 1,
                        plane + (2 * y + 1) * cw + 2 * x,
                        plane + (2 * y + 1) * cw + 2 * x + 1,
                    ];
                    let best = window
                        .into_iter()
                        .reduce(|a, b| if conv[b] > conv[a] { b } else { a })
                        .expect("four positions");
                    output.push(conv[best].max(0.0));
                    winners.push((conv[best] > 0.0).then_some(best));
                }
            }
        }
    }
    (output, winners)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (index, (got, want)) in got.iter().zip(want).enumerate() {
        let scale = want.abs().max(1.0);
        assert!(
            (got - want).abs() <= tolerance * scale,
            "{what}[{index}]: {got} against {want}"
        );
    }
}

fn in_pool<R: Send>(threads: usize, work: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(work)
}

#[test]
fn forward_and_backward_match_the_definition_on_one_thread_and_on_three() {
    for (seed, case) in CASES.iter().enumerate() {
        let shape = case.shape();
        let input = values(shape.input_len(), seed as u64);
        let weight = values(shape.weight_len(), 100 + seed as u64);
        let bias = values(case.weight[0], 200 + seed as u64);
        let output_grad = values(shape.output_len(), 300 + seed as u64);
        let [batch, _, height, width] = case.input;
        let [outs, channels, kh, kw] = case.weight;
        let conv_dims = [batch, outs, height - kh + 1, width - kw + 1];
        let conv = direct_conv(case.input, case.weight, &input, &weight, &bias);
        let (want_output, want_winners) = relu_pool(conv_dims, &conv);

        let mut conv_grad = vec![0.0f32; conv.len()];
        for (at, winner) in want_winners.iter().enumerate() {
            if let Some(index) = winner {
                conv_grad[*index] = output_grad[at];
            }
        }
        let (ch, cw) = (conv_dims[2], conv_dims[3]);
        let mut want_weight = vec![0.0f32; weight.len()];
        let mut want_bias = vec![0.0f32; outs];
        let mut want_input = vec![0.0f32; input.len()];
        for b in 0..batch {
            for o in 0..outs {
                for y in 0..ch {
                    for x in 0..cw {
                        let g = conv_grad[((b * outs + o) * ch + y) * cw + x];
                        want_bias[o] += g;
                        for c in 0..channels {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let at_input =
                                        ((b * channels + c) * height + y + i) * width + x + j;
                                    let at_weight = ((o * channels + c) * kh + i) * kw + j;
                                    want_weight[at_weight] += g * input[at_input];
                                    want_input[at_input] += g * weight[at_weight];
                                }
                            }
                        }
                    }
                }
            }
        }

        for threads in [1, 3] {
            let (pooled, gradients) = in_pool(threads, || {
                let pooled = conv_pool::forward(&shape, &input, &weight, &bias);
                let gradients = conv_pool::backward(
                    &shape,
                    &input,
                    &weight,
                    &pooled.winners,
                    &output_grad,
                    true,
                );
                (pooled, gradients)
            });
            let case = format!("case {seed}, {threads} thread(s)");
            assert_close(
                &format!("{case}: output"),
                &pooled.output,
                &want_output,
                1e-5,
            );
            for (at, (got, want)) in pooled.winners.iter().zip(&want_winners).enumerate() {
                assert_eq!(*got == NO_WINNER, want.is_none(), "{case}: winner {at}");
            }
            assert_close(
                &format!("{case}: weight"),
                &gradients.weight,
                &want_weight,
                1e-4,
            );
            assert_close(&format!("{case}: bias"), &gradients.bias, &want_bias, 1e-4);
            let input_grad = gradients.input.expect("asked for");
            assert_close(&format!("{case}: input"), &input_grad, &want_input, 1e-4);
            let without = in_pool(threads, || {
                conv_pool::backward(
                    &shape,
                    &input,
                    &weight,
                    &pooled.winners,
                    &output_grad,
                    false,
                )
            });
            assert!(without.input.is_none());
            assert_eq!(without.weight, gradients.weight, "{case}");
        }
    }
}

#[test]
fn the_weight_gradient_agrees_with_finite_differences() {
    let case = &CASES[2];
    let shape = case.shape();
    let input = values(shape.input_len(), 7);
    let mut weight: Vec<f32> = values(shape.weight_len(), 8);
    let bias = values(case.weight[0], 9);
    let direction = values(shape.output_len(), 10);
    let objective = |weight: &[f32]| -> f64 {
        let pooled = conv_pool::forward(&shape, &input, weight, &bias);
        pooled
            .output
            .iter()
            .zip(&direction)
            .map(|(o, d)| f64::from(*o) * f64::from(*d))
            .sum()
    };
    let pooled = conv_pool::forward(&shape, &input, &weight, &bias);
    let gradients =
        conv_pool::backward(&shape, &input, &weight, &pooled.winners, &direction, false);
    let step = 1e-3f32;
    for at in [0, 5, 17, shape.weight_len() - 1] {
        let original = weight[at];
        weight[at] = original + step;
        let up = objective(&weight);
        weight[at] = original - step;
        let down = objective(&weight);
        weight[at] = original;
        let numeric = (up - down) / (2.0 * f64::from(step));
        let analytic = f64::from(gradients.weight[at]);
        assert!(
            (numeric - analytic).abs() < 1e-2 * analytic.abs().max(1.0),
            "weight[{at}]: {analytic} against finite differences {numeric}"
        );
    }
}

#[test]
fn a_nan_in_the_input_or_the_bias_reaches_the_output_as_in_burn() {
    let shape = CASES[2].shape();
    let mut input = values(shape.input_len(), 1);
    let weight = values(shape.weight_len(), 2);
    let mut bias = values(CASES[2].weight[0], 3);
    // A NaN in the second position of the first image's first window; the first position is then
    // the one a naive `>` would keep.
    input[1] = f32::NAN;
    let pooled = conv_pool::forward(&shape, &input, &weight, &bias);
    assert!(pooled.output[0].is_nan(), "{}", pooled.output[0]);
    assert_ne!(pooled.winners[0], NO_WINNER);
    let clean = conv_pool::forward(&shape, &values(shape.input_len(), 1), &weight, &bias);
    assert!(clean.output.iter().all(|value| value.is_finite()));
    bias[0] = f32::NAN;
    let pooled = conv_pool::forward(&shape, &values(shape.input_len(), 1), &weight, &bias);
    let plane = shape.output_len() / CASES[2].input[0] / CASES[2].weight[0];
    assert!(pooled.output[..plane].iter().all(|value| value.is_nan()));
    assert!(
        pooled.output[plane..2 * plane]
            .iter()
            .all(|value| value.is_finite())
    );
}

#[test]
fn shapes_that_cannot_run_are_refused_with_the_reason() {
    let error = |input, weight| ConvPoolShape::new(input, weight).unwrap_err().to_string();
    assert!(error([1, 3, 4, 4], [6, 3, 5, 5]).contains("does not fit"));
    assert!(error([1, 3, 8, 8], [6, 2, 5, 5]).contains("input channels"));
    assert!(error([0, 3, 8, 8], [6, 3, 5, 5]).contains("zero"));
    assert!(error([1, 3, 5, 5], [6, 3, 5, 5]).contains("too small to pool"));
    assert!(error([usize::MAX / 2, 3, 8, 8], [6, 3, 5, 5]).contains("too large"));
    assert!(error([1, 1 << 54, 32, 32], [1, 1 << 54, 11, 11]).contains("too large"));
    assert!(error([1, 3, 1 << 33, 1 << 33], [6, 3, 5, 5]).contains("too large"));
}
