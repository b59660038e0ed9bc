//! Batch layout: each image's row is what a one-image run would build, and the DiT calls
//! group the CFG branches as documented.

use super::*;
use crate::model_dir::Guidance;
use crate::pipeline::{PromptSource, Request};
use crate::schedule::{Schedule, Shift};

fn plan(images: usize, (w, h): (usize, usize)) -> Plan {
    Plan {
        width: w,
        height: h,
        mode: Guidance::None,
        guidance: 4.0,
        cfg: false,
        schedule: Schedule::for_tokens((w / 16) * (h / 16), 2, Shift::Empirical).expect("schedule"),
        references: vec![],
        num_images: images,
    }
}

fn request(seed: u64) -> Request {
    let mut r = Request::new(PromptSource::Text("x".into()));
    r.seed = seed;
    r
}

fn embeds(len: usize, ctx: usize, fill: f32) -> Tensor {
    Tensor { shape: vec![1, len, ctx], data: (0..len * ctx).map(|i| fill + i as f32).collect() }
}

#[test]
fn each_row_is_the_one_image_row_of_its_seed() {
    let c = 4;
    let refs: Vec<f32> = (0..2 * c).map(|i| 100.0 + i as f32).collect(); // two reference tokens
    let batch = Latents::new(&plan(3, (32, 48)), &request(7), c, &refs).expect("batch");
    assert_eq!((batch.images, batch.tokens, batch.h, batch.w), (3, 2 * 3 + 2, 3, 2));
    for k in 0..3 {
        let one = Latents::new(&plan(1, (32, 48)), &request(7 + k as u64), c, &refs).expect("one");
        let row = &batch.x[k * batch.row_len()..(k + 1) * batch.row_len()];
        assert_eq!(row, &one.x[..], "row {k}");
    }
}

#[test]
fn seeds_wrap_around() {
    let batch = Latents::new(&plan(2, (16, 16)), &request(u64::MAX), 2, &[]).expect("batch");
    let zero = Latents::new(&plan(1, (16, 16)), &request(0), 2, &[]).expect("seed 0");
    assert_eq!(&batch.x[batch.row_len()..], &zero.x[..]);
}

#[test]
fn given_noise_rows_are_used_in_order() {
    let (c, h, w) = (2, 1, 2);
    let mut req = request(0);
    let data: Vec<f32> = (0..2 * c * h * w).map(|i| i as f32).collect();
    req.noise = Some(Tensor { shape: vec![2, c, h, w], data });
    let batch = Latents::new(&plan(2, (32, 16)), &req, c, &[]).expect("batch");
    // [C, h, w] -> [h·w, C]: row 0 = noise values 0..4 packed, row 1 = 4..8 packed
    assert_eq!(batch.x, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    assert_eq!(batch.unpacked(), (0..8).map(|i| i as f32).collect::<Vec<_>>());
}

#[test]
fn euler_step_moves_noisy_tokens_of_every_row_only() {
    let c = 2;
    let refs = [9.0, 9.0];
    let mut batch = Latents::new(&plan(2, (16, 16)), &request(1), c, &refs).expect("batch");
    let before = batch.x.clone();
    batch.euler_step(&[1.0, 2.0, 3.0, 4.0], 1.0, 0.5).expect("step");
    let expect = [before[0] - 0.5, before[1] - 1.0, 9.0, 9.0, before[4] - 1.5, before[5] - 2.0, 9.0, 9.0];
    assert_eq!(batch.x, expect);
    let err = batch.euler_step(&[1.0; 3], 1.0, 0.5).expect_err("wrong velocity length");
    assert!(err.to_string().contains("3 values for 2 images"), "{err}");
}

#[test]
fn no_cfg_is_one_call_of_n_rows() {
    let batch = Latents::new(&plan(3, (16, 32)), &request(0), 2, &[]).expect("batch");
    let dit = DitBatch::new(&batch, &[], &embeds(5, 3, 0.0), None).expect("dit");
    assert_eq!(dit.calls.len(), 1);
    let call = &dit.calls[0];
    assert_eq!((call.rows(), call.branches.as_slice()), (3, &[Branch::Cond][..]));
    assert_eq!(call.text.shape, [3, 5, 3]);
    assert_eq!(call.img_ids.len(), 3 * 2 * 4);
    assert_eq!(&call.img_ids[8..16], &[0, 0, 0, 0, 0, 1, 0, 0], "row 1 repeats row 0's ids");
    assert_eq!(call.txt_ids.len(), 3 * 5 * 4);
}

#[test]
fn cfg_with_equal_lengths_is_one_call_cond_rows_first() {
    let batch = Latents::new(&plan(2, (16, 16)), &request(0), 2, &[]).expect("batch");
    let (c, u) = (embeds(4, 2, 0.0), embeds(4, 2, 1000.0));
    let dit = DitBatch::new(&batch, &[[10, 0, 0, 0]], &c, Some(&u)).expect("dit");
    assert_eq!(dit.calls.len(), 1);
    let call = &dit.calls[0];
    assert_eq!(call.branches, [Branch::Cond, Branch::Uncond]);
    assert_eq!(call.text.shape, [4, 4, 2]);
    let row = 8;
    assert_eq!(&call.text.data[..row], &c.data[..]);
    assert_eq!(&call.text.data[row..2 * row], &c.data[..]);
    assert_eq!(&call.text.data[2 * row..3 * row], &u.data[..]);
    assert_eq!(&call.text.data[3 * row..], &u.data[..]);
    assert_eq!(&call.img_ids[4..8], &[10, 0, 0, 0], "reference ids follow the noisy token");
}

#[test]
fn cfg_with_different_lengths_is_one_call_per_branch() {
    let batch = Latents::new(&plan(2, (16, 16)), &request(0), 2, &[]).expect("batch");
    let dit = DitBatch::new(&batch, &[], &embeds(4, 2, 0.0), Some(&embeds(6, 2, 0.0))).expect("dit");
    let shapes: Vec<_> = dit.calls.iter().map(|c| (c.branches.clone(), c.text.shape.clone())).collect();
    assert_eq!(shapes, [(vec![Branch::Cond], vec![2, 4, 2]), (vec![Branch::Uncond], vec![2, 6, 2])]);
}

#[test]
fn malformed_embeddings_are_refused() {
    let batch = Latents::new(&plan(1, (16, 16)), &request(0), 2, &[]).expect("batch");
    let bad = Tensor { shape: vec![2, 4, 2], data: vec![0.0; 16] };
    let err = DitBatch::new(&batch, &[], &bad, None).err().expect("batch of 2 embeddings");
    assert!(err.to_string().contains("[2, 4, 2]"), "{err}");
}

#[test]
fn listed_seeds_replace_seed_plus_k() {
    let mut req = request(100);
    req.seeds = vec![7, 3];
    let batch = Latents::new(&plan(2, (16, 32)), &req, 2, &[]).expect("batch");
    for (k, seed) in [7u64, 3].into_iter().enumerate() {
        let one = Latents::new(&plan(1, (16, 32)), &request(seed), 2, &[]).expect("one");
        assert_eq!(&batch.x[k * batch.row_len()..(k + 1) * batch.row_len()], &one.x[..], "image {k}");
    }
}

#[test]
fn per_image_embeddings_give_each_row_its_own_prompt() {
    let batch = Latents::new(&plan(2, (16, 16)), &request(0), 2, &[]).expect("batch");
    let cond = Tensor { shape: vec![2, 3, 2], data: (0..12).map(|i| i as f32).collect() };
    let uncond = embeds(3, 2, 500.0);
    let dit = DitBatch::new(&batch, &[], &cond, Some(&uncond)).expect("dit");
    assert_eq!(dit.calls.len(), 1, "equal lengths: one call for both branches");
    let text = &dit.calls[0].text;
    assert_eq!(text.shape, [4, 3, 2]);
    assert_eq!(&text.data[..12], &cond.data[..], "image k's conditional row is row k of the embeddings");
    assert_eq!(&text.data[12..18], &uncond.data[..]);
    assert_eq!(&text.data[18..], &uncond.data[..]);
    let three = Tensor { shape: vec![3, 3, 2], data: vec![0.0; 18] };
    let err = DitBatch::new(&batch, &[], &three, None).err().expect("3 rows for 2 images");
    assert!(err.to_string().contains("[2, L, ctx]"), "{err}");
}
