//! GGML tensor types a GGUF file may hold: ids, block geometry and names, as the `gguf`
//! 0.19.0 package's `GGMLQuantizationType` / `GGML_QUANT_SIZES` define them. Only the types
//! this crate decodes are listed; any other id is an error naming the tensor and the id.

/// A decodable GGML tensor type.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

/// Elements of a K-quant super-block (`QK_K`).
pub const QK_K: usize = 256;

impl GgmlType {
    /// Every decodable type, in id order.
    pub const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::BF16,
    ];

    /// The type of a GGUF type id, `None` for ids this crate cannot decode.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The type named `name` as llama.cpp prints it (`Q4_K`, `q4_k`, `Q4K`), case-insensitive.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        let want = name.to_ascii_uppercase().replace('_', "");
        GgmlType::ALL.into_iter().find(|t| t.name().replace('_', "") == want)
    }

    /// The GGUF type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// The name llama.cpp and the `gguf` package print (`Q4_K`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            _ => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// True for F32/F16/BF16: the stored values are the values, no blocks.
    pub fn is_float(self) -> bool {
        self.block_size() == 1
    }

    /// The plain dtype of a float type (its bytes can be used as they are).
    pub fn plain_dtype(self) -> Option<flux2_graphs::DType> {
        match self {
            GgmlType::F32 => Some(flux2_graphs::DType::F32),
            GgmlType::F16 => Some(flux2_graphs::DType::F16),
            GgmlType::BF16 => Some(flux2_graphs::DType::BF16),
            _ => None,
        }
    }

    /// Bytes of `numel` elements (a multiple of the block size), `None` on overflow.
    pub fn bytes_for(self, numel: u64) -> Option<u64> {
        (numel / self.block_size() as u64).checked_mul(self.type_size() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Name of a type id for messages, including the types this crate does not decode.
pub fn type_id_name(id: u32) -> String {
    const OTHERS: [(u32, &str); 20] = [
        (9, "Q8_1"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
        (40, "NVFP4"),
    ];
    match GgmlType::from_id(id) {
        Some(t) => t.name().to_string(),
        None => match OTHERS.iter().find(|(i, _)| *i == id) {
            Some((_, n)) => format!("{n} (id {id})"),
            None => format!("unknown type id {id}"),
        },
    }
}
