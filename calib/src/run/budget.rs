//! The image budget (`--min-psnr`): what users see decides how much stays in float.
//!
//! Every graph is first selected under the NMSE budget (`--budget-nmse`, the guard). When full
//! generations run, their decoded images are compared with the float pipeline's on held-out
//! prompts; while the worst PSNR is below `--min-psnr`, every graph is selected again under a
//! 4× tighter NMSE budget, so more layers stay in float, still chosen by error per unit of
//! time saved. Sensitivity measurements and the float images are reused between rounds, so a
//! round costs the configurations not seen before and the quantised generations. The search
//! never loosens the guard: a model that meets the image budget at the default NMSE budget is
//! what it was before the image budget existed.

use std::path::Path;

use crate::report::{BudgetRound, GenerationReport, ImageBudget};
use flux2_runtime::model_dir::ModelDir;
use flux2_runtime::SessionOptions;

use super::eval;
use super::graph::{GraphOutcome, Prepared};
use super::{CalibrateError, CalibrateOptions, Event};

/// The selection written (per graph), its generations, and the budget's rounds (None when no
/// image budget applied).
pub(super) type Searched = (Vec<GraphOutcome>, Vec<GenerationReport>, Option<ImageBudget>);

/// The most rounds of the image-PSNR budget (each divides the NMSE budget by 4).
const MAX_ROUNDS: usize = 6;

/// What the budget search's rounds share.
pub(super) struct SearchContext<'a> {
    pub model: &'a ModelDir,
    pub opts: &'a CalibrateOptions,
    pub record: &'a super::data::CalibrationRecord,
    pub sess: &'a SessionOptions,
    pub staging: &'a Path,
}

/// Selects every graph under the NMSE budget, then, when full generations run and
/// `--min-psnr` is set, checks the decoded images against float: while the worst is below the
/// budget, every graph is selected again under a 4× tighter NMSE budget (more layers kept in
/// float, by error per unit of time saved), until the images meet it or nothing is left to
/// keep. The NMSE budget is the guard: the search never loosens it.
pub(super) fn search(
    ctx: &SearchContext,
    prepared: &[Prepared],
    can_generate: bool,
    on_event: &mut dyn FnMut(Event),
) -> Result<Searched, CalibrateError> {
    let opts = ctx.opts;
    let min_psnr = opts.min_psnr.filter(|m| *m > 0.0 && can_generate);
    let (mut budget, mut rounds, mut float_images) = (opts.budget_nmse, Vec::new(), Vec::new());
    loop {
        let mut outcomes = Vec::with_capacity(prepared.len());
        for p in prepared {
            outcomes.push(p.select(budget, opts, ctx.staging, ctx.sess, on_event)?);
        }
        let generations = if can_generate {
            eval::generations(
                ctx.model,
                ctx.staging,
                opts,
                ctx.record,
                ctx.sess,
                &mut float_images,
                on_event,
            )?
        } else {
            vec![]
        };
        let Some(min) = min_psnr else { return Ok((outcomes, generations, None)) };
        let worst = generations.iter().map(|g| g.psnr_db).fold(f64::INFINITY, f64::min);
        let quantized: usize = outcomes.iter().map(|o| o.report.layers_quantized).sum();
        rounds.push(BudgetRound { budget_nmse: budget, layers_quantized: quantized, worst_psnr_db: worst });
        let met = worst >= min;
        let exhausted = prepared.iter().zip(&outcomes).all(|(p, o)| p.all_float(o));
        if met || exhausted || rounds.len() >= MAX_ROUNDS {
            return Ok((outcomes, generations, Some(ImageBudget { min_psnr_db: min, rounds, met })));
        }
        budget /= 4.0;
    }
}
