//! Image I/O: reference images prepared as the Flux2 pipelines prepare them, and PNG (with
//! provenance metadata) or JPEG output chosen by the file extension.
//!
//! Decoding untrusted files is bounded: [`DECODE_LIMITS`] caps the declared dimensions and
//! the decoder's allocation before any pixel buffer is made, so a crafted header cannot make
//! us allocate gigabytes.
//!
//! References (diffusers `Flux2ImageProcessor`): both sides ≥ 64 px and aspect ratio ≤ 8;
//! an area above 1024² is resized (Lanczos) to about 1024² with `int(side·s)`; each side is
//! floored to a multiple of 16 and the image centre-cropped (`left = (w − w16) // 2`); pixels
//! go RGB -> [0,1] -> 2x − 1.

use std::path::{Path, PathBuf};

use crate::RuntimeError;

/// Where a reference image comes from: a file, encoded bytes (PNG or JPEG, e.g. from a
/// network request) or raw pixels. Every source goes through the same preparation, so the
/// same picture gives the same tensor whichever way it arrives.
#[derive(Clone, Debug, PartialEq)]
pub enum Reference {
    Path(PathBuf),
    /// Encoded image bytes; `name` identifies them in messages (e.g. `references[1]`).
    Encoded {
        name: String,
        bytes: Vec<u8>,
    },
    /// 8-bit RGB pixels, row-major `[height, width, 3]`.
    Rgb {
        name: String,
        width: usize,
        height: usize,
        pixels: Vec<u8>,
    },
}

impl Reference {
    /// What messages call this reference: the file path or the given name.
    pub fn label(&self) -> PathBuf {
        match self {
            Reference::Path(p) => p.clone(),
            Reference::Encoded { name, .. } | Reference::Rgb { name, .. } => PathBuf::from(name),
        }
    }
}

impl From<PathBuf> for Reference {
    fn from(p: PathBuf) -> Self {
        Reference::Path(p)
    }
}

/// A CHW float image.
#[derive(Clone, Debug)]
pub struct Chw {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

const MIN_SIDE: u32 = 64;
const MAX_ASPECT: f64 = 8.0;
const MAX_AREA: u64 = 1024 * 1024;

/// Largest side and decoder allocation accepted for a reference image: 16384 px a side (a
/// 268-megapixel photo), 1 GiB.
pub const MAX_DECODE_SIDE: u32 = 16384;
pub const MAX_DECODE_ALLOC: u64 = 1 << 30;

/// The limits every decode runs with.
pub fn decode_limits() -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(MAX_DECODE_SIDE);
    l.max_image_height = Some(MAX_DECODE_SIDE);
    l.max_alloc = Some(MAX_DECODE_ALLOC);
    l
}

fn bad(path: &Path, msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Image { path: path.to_path_buf(), msg: msg.into() }
}

/// Loads and prepares a reference image file: [3, h, w] in [-1, 1], h and w multiples of 16.
pub fn load_reference(path: &Path) -> Result<Chw, RuntimeError> {
    prepare_reference(&Reference::Path(path.to_path_buf()))
}

/// Decodes a reference from any source into 8-bit RGB.
fn decode_reference(r: &Reference) -> Result<image::RgbImage, RuntimeError> {
    let path = r.label();
    let decoded = match r {
        Reference::Path(p) if p.is_dir() => return Err(bad(p, "is a folder, not an image file")),
        Reference::Path(p) => {
            let mut reader = image::ImageReader::open(p)
                .map_err(|e| bad(&path, format!("cannot open: {e}")))?
                .with_guessed_format()
                .map_err(|e| bad(&path, format!("cannot read: {e}")))?;
            reader.limits(decode_limits());
            reader.decode()
        }
        Reference::Encoded { bytes, .. } => {
            let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| bad(&path, format!("cannot read: {e}")))?;
            reader.limits(decode_limits());
            reader.decode()
        }
        Reference::Rgb { width, height, pixels, .. } => {
            let n = width.checked_mul(*height).and_then(|n| n.checked_mul(3)).unwrap_or(usize::MAX);
            return u32::try_from(*width)
                .ok()
                .zip(u32::try_from(*height).ok())
                .filter(|_| pixels.len() == n)
                .and_then(|(w, h)| image::RgbImage::from_raw(w, h, pixels.clone()))
                .ok_or_else(|| {
                    bad(&path, format!("{} bytes for {width}×{height} RGB pixels (need {n})", pixels.len()))
                });
        }
    };
    Ok(decoded.map_err(|e| bad(&path, format!("not a readable image (PNG or JPEG): {e}")))?.to_rgb8())
}

/// Prepares a reference image: [3, h, w] in [-1, 1], h and w multiples of 16.
pub fn prepare_reference(r: &Reference) -> Result<Chw, RuntimeError> {
    let path = r.label();
    let path = path.as_path();
    let mut rgb = decode_reference(r)?;
    let (w, h) = rgb.dimensions();
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(bad(
            path,
            format!("image too small: {w}×{h}; both sides must be at least {MIN_SIDE} px"),
        ));
    }
    let aspect = (w as f64 / h as f64).max(h as f64 / w as f64);
    if aspect > MAX_ASPECT {
        return Err(bad(path, format!("aspect ratio {aspect:.1}:1 of {w}×{h} exceeds {MAX_ASPECT}:1")));
    }
    if (w as u64) * (h as u64) > MAX_AREA {
        let s = (MAX_AREA as f64 / (w as f64 * h as f64)).sqrt();
        let (nw, nh) = ((w as f64 * s) as u32, (h as f64 * s) as u32);
        rgb = image::imageops::resize(&rgb, nw, nh, image::imageops::FilterType::Lanczos3);
    }
    let (w, h) = rgb.dimensions();
    let (cw, ch) = (w / 16 * 16, h / 16 * 16);
    let (left, top) = ((w - cw) / 2, (h - ch) / 2);
    let (cw, ch) = (cw as usize, ch as usize);
    let mut data = vec![0f32; 3 * cw * ch];
    for y in 0..ch {
        for x in 0..cw {
            let p = rgb.get_pixel(left + x as u32, top + y as u32);
            for c in 0..3 {
                data[c * cw * ch + y * cw + x] = p[c] as f32 / 255.0 * 2.0 - 1.0;
            }
        }
    }
    Ok(Chw { width: cw, height: ch, data })
}

/// The image formats `generate --out` can write.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    Jpeg,
}

/// The format the extension of `path` names (`.png`, `.jpg`/`.jpeg`, any case); an error
/// naming the path for anything else, so a picture is never written under a wrong name.
pub fn output_format(path: &Path) -> Result<OutputFormat, RuntimeError> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => Ok(OutputFormat::Png),
        Some("jpg" | "jpeg") => Ok(OutputFormat::Jpeg),
        Some(other) => Err(bad(
            path,
            format!(
                "cannot write '.{other}' images; name the output .png, .jpg or .jpeg (webp is not built in)"
            ),
        )),
        None => Err(bad(path, "the output name has no extension; use .png, .jpg or .jpeg")),
    }
}

/// Writes a [3, H, W] image in [0, 1] in the format of the extension of `path` (see
/// [`output_format`]), atomically. PNG carries `text` as `tEXt` chunks; JPEG (quality 95)
/// has no place for them.
pub fn write_image(path: &Path, img: &Chw, text: &[(String, String)]) -> Result<(), RuntimeError> {
    match output_format(path)? {
        OutputFormat::Png => write_png(path, img, text),
        OutputFormat::Jpeg => write_jpeg(path, img),
    }
}

/// The 8-bit pixels of a [3, H, W] image in [0, 1], row-major `[H, W, 3]`: exactly what
/// [`write_png`] stores (rounded, as diffusers' PIL output).
pub fn to_rgb8(img: &Chw) -> Vec<u8> {
    let (w, h) = (img.width, img.height);
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v = img.data[c * w * h + y * w + x].clamp(0.0, 1.0);
                rgb[(y * w + x) * 3 + c] = (v * 255.0).round() as u8;
            }
        }
    }
    rgb
}

fn write_jpeg(path: &Path, img: &Chw) -> Result<(), RuntimeError> {
    let rgb = to_rgb8(img);
    let tmp = tmp_path(path);
    let io = |e: std::io::Error| bad(path, format!("cannot write: {e}"));
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
    let result = image::ImageEncoder::write_image(
        enc,
        &rgb,
        img.width as u32,
        img.height as u32,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| bad(path, format!("cannot encode JPEG: {e}")))
    .and_then(|()| std::io::Write::flush(&mut out).map_err(io));
    drop(out);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes a [3, H, W] image in [0, 1] as an 8-bit RGB PNG (rounded, as diffusers' PIL
/// output) with `tEXt` chunks, atomically.
pub fn write_png(path: &Path, img: &Chw, text: &[(String, String)]) -> Result<(), RuntimeError> {
    let (w, h) = (img.width, img.height);
    let rgb = to_rgb8(img);
    let tmp = tmp_path(path);
    let io = |e: std::io::Error| bad(path, format!("cannot write: {e}"));
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let result = (|| {
        for (k, v) in text {
            enc.add_text_chunk(k.clone(), v.clone()).map_err(|e| bad(path, e.to_string()))?;
        }
        let mut writer = enc.write_header().map_err(|e| bad(path, e.to_string()))?;
        writer.write_image_data(&rgb).map_err(|e| bad(path, e.to_string()))?;
        writer.finish().map_err(|e| bad(path, e.to_string()))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// `dir/.name.tmp` beside `path`.
pub fn tmp_path(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}
