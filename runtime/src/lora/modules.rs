//! Where an adapter's module lands in the graph: the table of the DiT's linear weights
//! (diffusers names, `[out, in]`) and the module names each format uses for them.
//!
//! * diffusers / PEFT: the module name is the weight name without `.weight`.
//! * BFL: the original names (flux2-arch.md §3). A fused `img_attn.qkv` / `txt_attn.qkv`
//!   lands on three weights (`to_q`/`to_k`/`to_v` or `add_*_proj`): rows `[q; k; v]` of the
//!   module's output go to the three weights in turn (for LoRA: B splits, A is shared). As in
//!   diffusers 0.42.1, `final_layer.adaLN_modulation.1` lands on `norm_out.linear` rows as
//!   stored (ai-toolkit trains on the diffusers module, so its rows are already (scale, shift)).
//!   Files under `diffusion_model.` may also use diffusers block names (`transformer_blocks.…`).
//! * kohya: `lora_unet_` + the BFL name with `.` → `_`. diffusers 0.42.1 converts only the
//!   blocks, `img_in`, `txt_in`, `time_in` and `final_layer.linear`; kohya keys for the other
//!   layers the model has (modulations, `guidance_in`, `final_layer.adaLN_modulation.1`) are
//!   skipped with a warning as diffusers does, so results stay identical.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::Format;

/// A range of rows of a module's output that is one whole weight of the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Graph weight name (`transformer_blocks.0.attn.to_q.weight`).
    pub weight: String,
    /// Rows of the module's output (rows of B) that land on it.
    pub rows: Range<usize>,
    /// The weight's input width (columns of A).
    pub cols: usize,
}

impl Segment {
    /// The diffusers module the weight belongs to (for peft's rank/alpha patterns).
    pub fn module(&self) -> &str {
        self.weight.strip_suffix(".weight").unwrap_or(&self.weight)
    }
}

/// Where a file's module goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Segments(Vec<Segment>),
    /// A layer the model has but diffusers does not adapt for this format (skipped, warned).
    Skipped(String),
    Unknown,
}

/// The DiT's linear weights and their names in every format.
#[derive(Clone, Debug, Default)]
pub struct ModuleTable {
    pub shapes: BTreeMap<String, Vec<usize>>,
    diffusers: BTreeMap<String, Vec<Segment>>,
    bfl: BTreeMap<String, Vec<Segment>>,
}

/// kohya modules diffusers 0.42.1 converts outside the blocks (`_convert_kohya_flux2_lora_to_diffusers`).
const KOHYA_EXTRAS: [&str; 5] =
    ["img_in", "txt_in", "time_in.in_layer", "time_in.out_layer", "final_layer.linear"];

impl ModuleTable {
    /// Builds the table from the graph's weights (`name -> shape`); only 2-D `*.weight`
    /// tensors are adaptable.
    pub fn new<'a>(weights: impl IntoIterator<Item = (&'a str, &'a [usize])>) -> ModuleTable {
        let mut t = ModuleTable::default();
        for (name, shape) in weights {
            t.shapes.insert(name.to_string(), shape.to_vec());
        }
        let mut fused: BTreeMap<String, Vec<(usize, Segment)>> = BTreeMap::new();
        for (name, shape) in &t.shapes {
            let (Some(module), &[out, cols]) = (name.strip_suffix(".weight"), &shape[..]) else { continue };
            let seg = Segment { weight: name.clone(), rows: 0..out, cols };
            t.diffusers.insert(module.to_string(), vec![seg.clone()]);
            match bfl_name(module) {
                Some((bfl, None)) => {
                    t.bfl.insert(bfl, vec![seg]);
                }
                Some((bfl, Some(part))) => fused.entry(bfl).or_default().push((part, seg)),
                None => {}
            }
        }
        for (bfl, mut parts) in fused {
            parts.sort_by_key(|(p, _)| *p);
            if parts.iter().map(|(p, _)| *p).eq(0..3) {
                let mut start = 0;
                let segs = parts
                    .into_iter()
                    .map(|(_, mut s)| {
                        let n = s.rows.len();
                        s.rows = start..start + n;
                        start += n;
                        s
                    })
                    .collect();
                t.bfl.insert(bfl, segs);
            }
        }
        t
    }

    /// Segments for a module name as written in a file of `format` (prefix removed).
    pub fn lookup(&self, format: Format, module: &str) -> Lookup {
        let found = |s: Option<&Vec<Segment>>| s.map_or(Lookup::Unknown, |s| Lookup::Segments(s.clone()));
        match format {
            Format::Diffusers => found(self.diffusers.get(module)),
            Format::Bfl => {
                let expanded =
                    module.strip_prefix("sformer_blocks.").map(|r| format!("transformer_blocks.{r}"));
                let name = expanded.as_deref().unwrap_or(module);
                match self.bfl.get(name) {
                    Some(s) => Lookup::Segments(s.clone()),
                    None if name.starts_with("transformer_blocks.")
                        || name.starts_with("single_transformer_blocks.") =>
                    {
                        found(self.diffusers.get(name))
                    }
                    None => Lookup::Unknown,
                }
            }
            Format::Kohya => self.kohya(module),
        }
    }

    fn kohya(&self, module: &str) -> Lookup {
        let Some(bfl) = self.bfl.keys().find(|b| b.replace('.', "_") == module) else {
            return Lookup::Unknown;
        };
        let converted = bfl.starts_with("double_blocks.")
            || bfl.starts_with("single_blocks.")
            || KOHYA_EXTRAS.contains(&bfl.as_str());
        if converted {
            Lookup::Segments(self.bfl[bfl].clone())
        } else {
            Lookup::Skipped(bfl.clone())
        }
    }

    /// Module names a format would accept (for "did you mean" hints and `flux2 inspect`).
    pub fn names(&self, format: Format) -> BTreeSet<String> {
        match format {
            Format::Diffusers => self.diffusers.keys().cloned().collect(),
            Format::Bfl => self.bfl.keys().chain(self.diffusers.keys()).cloned().collect(),
            Format::Kohya => self.bfl.keys().map(|b| b.replace('.', "_")).collect(),
        }
    }
}

/// The BFL module name of a diffusers module, with the part index for fused q/k/v.
fn bfl_name(module: &str) -> Option<(String, Option<usize>)> {
    let p: Vec<&str> = module.split('.').collect();
    let plain = |s: String| Some((s, None));
    match p.as_slice() {
        ["x_embedder"] => plain("img_in".into()),
        ["context_embedder"] => plain("txt_in".into()),
        ["time_guidance_embed", emb, lin] => {
            let m = match *emb {
                "timestep_embedder" => "time_in",
                "guidance_embedder" => "guidance_in",
                _ => return None,
            };
            let l = match *lin {
                "linear_1" => "in_layer",
                "linear_2" => "out_layer",
                _ => return None,
            };
            plain(format!("{m}.{l}"))
        }
        [m
        @ ("double_stream_modulation_img" | "double_stream_modulation_txt" | "single_stream_modulation"), "linear"] => {
            plain(format!("{m}.lin"))
        }
        ["norm_out", "linear"] => plain("final_layer.adaLN_modulation.1".into()),
        ["proj_out"] => plain("final_layer.linear".into()),
        ["transformer_blocks", i, rest @ ..] => {
            let b = format!("double_blocks.{i}");
            let qkv = |stream: &str, k: usize| Some((format!("{b}.{stream}_attn.qkv"), Some(k)));
            match rest {
                ["attn", "to_q"] => qkv("img", 0),
                ["attn", "to_k"] => qkv("img", 1),
                ["attn", "to_v"] => qkv("img", 2),
                ["attn", "add_q_proj"] => qkv("txt", 0),
                ["attn", "add_k_proj"] => qkv("txt", 1),
                ["attn", "add_v_proj"] => qkv("txt", 2),
                ["attn", "to_out", "0"] => plain(format!("{b}.img_attn.proj")),
                ["attn", "to_add_out"] => plain(format!("{b}.txt_attn.proj")),
                [ff @ ("ff" | "ff_context"), lin @ ("linear_in" | "linear_out")] => {
                    let s = if *ff == "ff" { "img" } else { "txt" };
                    plain(format!("{b}.{s}_mlp.{}", if *lin == "linear_in" { 0 } else { 2 }))
                }
                _ => None,
            }
        }
        ["single_transformer_blocks", i, "attn", l @ ("to_qkv_mlp_proj" | "to_out")] => {
            let n = if *l == "to_qkv_mlp_proj" { "linear1" } else { "linear2" };
            plain(format!("single_blocks.{i}.{n}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ModuleTable {
        let d = 4;
        let shapes: Vec<(String, Vec<usize>)> = vec![
            ("x_embedder.weight".into(), vec![d, 128]),
            ("norm_out.linear.weight".into(), vec![2 * d, d]),
            ("transformer_blocks.0.attn.to_q.weight".into(), vec![d, d]),
            ("transformer_blocks.0.attn.to_k.weight".into(), vec![d, d]),
            ("transformer_blocks.0.attn.to_v.weight".into(), vec![d, d]),
            ("transformer_blocks.0.attn.norm_q.weight".into(), vec![2]),
            ("single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight".into(), vec![9 * d, d]),
            ("double_stream_modulation_img.linear.weight".into(), vec![6 * d, d]),
        ];
        ModuleTable::new(shapes.iter().map(|(n, s)| (n.as_str(), s.as_slice())))
    }

    #[test]
    fn maps_every_format() {
        let t = table();
        let Lookup::Segments(s) = t.lookup(Format::Bfl, "double_blocks.0.img_attn.qkv") else { panic!() };
        let rows: Vec<_> = s.iter().map(|s| (s.module().to_string(), s.rows.clone())).collect();
        assert_eq!(
            rows,
            vec![
                ("transformer_blocks.0.attn.to_q".to_string(), 0..4),
                ("transformer_blocks.0.attn.to_k".to_string(), 4..8),
                ("transformer_blocks.0.attn.to_v".to_string(), 8..12)
            ]
        );
        let Lookup::Segments(s) = t.lookup(Format::Kohya, "single_blocks_0_linear1") else { panic!() };
        assert_eq!(s[0].weight, "single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight");
        assert!(matches!(t.lookup(Format::Diffusers, "x_embedder"), Lookup::Segments(_)));
        assert!(matches!(t.lookup(Format::Bfl, "transformer_blocks.0.attn.to_q"), Lookup::Segments(_)));
        assert!(matches!(t.lookup(Format::Bfl, "final_layer.adaLN_modulation.1"), Lookup::Segments(_)));
        assert_eq!(
            t.lookup(Format::Kohya, "double_stream_modulation_img_lin"),
            Lookup::Skipped("double_stream_modulation_img.lin".into())
        );
        assert_eq!(t.lookup(Format::Diffusers, "transformer_blocks.0.attn.norm_q"), Lookup::Unknown);
        assert_eq!(t.lookup(Format::Diffusers, "transformer_blocks.7.attn.to_q"), Lookup::Unknown);
        assert_eq!(t.lookup(Format::Bfl, "double_blocks.0.txt_attn.qkv"), Lookup::Unknown);
    }
}
