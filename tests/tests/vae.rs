//! VAE export: parity with diffusers 0.42.1 `AutoencoderKLFlux2` + the Flux2 pipeline's
//! patchify / BatchNorm steps (fixture: tests/fixtures/gen_vae.py), in both layouts, both
//! weight modes and both graph targets; sizes other than one fixed size, batch 2,
//! non-square images.

use flux2_exporter::{Kind, WeightMode};
use flux2_graphs::Target;
use flux2_runtime::Input;
use flux2_tests::export::{export_to, onnx_check, options};
use flux2_tests::{assert_close, f32_of, fixture, load_tensors, run_file};

const TOL: f32 = 1e-4;

fn check_vae(dir: &std::path::Path) {
    let io = load_tensors(&fixture("vae/io.safetensors")).unwrap();
    for case in ["enc", "enc2"] {
        let image = f32_of(&io, &format!("{case}_image"));
        let out = run_file(&dir.join("vae_encoder.onnx"), vec![("image", Input::F32(image))]).unwrap();
        assert_close(
            &format!("{case}_latents"),
            &f32_of(&io, &format!("{case}_latents")),
            &out["latents"],
            TOL,
        );
    }
    for case in ["dec", "dec2"] {
        let lat = f32_of(&io, &format!("{case}_latents"));
        let out = run_file(&dir.join("vae_decoder.onnx"), vec![("latents", Input::F32(lat))]).unwrap();
        assert_close(&format!("{case}_image"), &f32_of(&io, &format!("{case}_image")), &out["image"], TOL);
    }
}

#[test]
fn diffusers_layout_copy_matches_reference_on_both_targets() {
    for target in [Target::Ort, Target::TensorRt] {
        let out = tempfile::tempdir().unwrap();
        let m =
            export_to(&fixture("vae/diffusers"), out.path(), None, options(target, None), WeightMode::Copy)
                .unwrap();
        assert!(m.graphs.contains_key("vae_encoder") && m.graphs.contains_key("vae_decoder"));
        check_vae(out.path());
        onnx_check(&out.path().join("vae_encoder.onnx"));
        onnx_check(&out.path().join("vae_decoder.onnx"));
    }
}

#[test]
fn bfl_layout_gives_the_same_outputs() {
    // ae.safetensors carries no config: the GroupNorm group count comes from --config.
    let cfg = fixture("vae/diffusers/vae/config.json");
    for mode in [WeightMode::Copy, WeightMode::Link] {
        let out = tempfile::tempdir().unwrap();
        export_to(
            &fixture("vae/bfl/ae.safetensors"),
            out.path(),
            Some(vec![Kind::Vae]),
            options(Target::Ort, Some(&cfg)),
            mode,
        )
        .unwrap();
        check_vae(out.path());
    }
}

#[test]
fn link_mode_writes_no_weight_bytes() {
    let out = tempfile::tempdir().unwrap();
    export_to(&fixture("vae/diffusers"), out.path(), None, options(Target::Ort, None), WeightMode::Link)
        .unwrap();
    assert!(!out.path().join("vae_encoder.onnx.data").exists());
    check_vae(out.path());
}

#[test]
fn bfl_without_config_explains_the_group_count() {
    let out = tempfile::tempdir().unwrap();
    let err = export_to(
        &fixture("vae/bfl/ae.safetensors"),
        out.path(),
        None,
        options(Target::Ort, None),
        WeightMode::Copy,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("norm_num_groups") && err.contains("ae.safetensors"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "nothing may be written");
}
