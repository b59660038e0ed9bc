//! `/proc/cpuinfo` parsing on sample texts shaped like those of an AVX2-only VM, an AVX-512
//! server without AMX, an AMX server and an Arm board.

use super::CpuInfo;

/// One x86 processor stanza with `flags`.
fn x86(index: usize, model: &str, family: u32, model_no: u32, flags: &str) -> String {
    format!(
        "processor\t: {index}\nvendor_id\t: GenuineSample\ncpu family\t: {family}\nmodel\t\t: {model_no}\n\
         model name\t: {model}\nstepping\t: 1\ncpu MHz\t\t: 2600.000\ncache size\t: 1024 KB\n\
         flags\t\t: {flags}\nbogomips\t: 5200.00\npower management:\n\n"
    )
}

const BASE: &str = "fpu vme de pse tsc msr pae mce cx8 apic sep sse sse2 ssse3 sse4_1 sse4_2 popcnt";

#[test]
fn avx2_only_vm() {
    let flags = format!("{BASE} fma avx f16c avx2 bmi1 bmi2");
    let text = x86(0, "AMD EPYC", 25, 17, &flags) + &x86(1, "AMD EPYC", 25, 17, &flags);
    let c = CpuInfo::parse(&text);
    assert_eq!(c.model, "AMD EPYC");
    assert_eq!(c.family.as_deref(), Some("family 25 model 17 stepping 1"));
    assert_eq!(c.logical_cpus, 2);
    assert_eq!(c.isa, ["AVX2", "FMA"]);
    assert!(c.missing.iter().any(|m| m == "AVX-512F") && c.missing.iter().any(|m| m == "AMX-INT8"));
    assert!(c.has("AVX2") && !c.has("AVX-512 VNNI"));
    let s = c.summary();
    assert!(
        s.starts_with("AMD EPYC (family 25 model 17 stepping 1, 2 logical CPUs); AVX2 FMA; without AVX-512F"),
        "{s}"
    );
}

#[test]
fn avx512_vnni_bf16_without_amx() {
    let flags = format!(
        "{BASE} fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vnni"
    );
    let text: String = (0..4).map(|i| x86(i, "AMD EPYC 9R14 96-Core Processor", 25, 17, &flags)).collect();
    let c = CpuInfo::parse(&text);
    assert_eq!(c.logical_cpus, 4);
    assert_eq!(c.isa, ["AVX2", "FMA", "AVX-512F", "AVX-512BW", "AVX-512VL", "AVX-512 VNNI", "AVX-512 BF16"]);
    assert_eq!(c.missing, ["AVX-VNNI", "AMX-TILE", "AMX-INT8", "AMX-BF16"]);
}

#[test]
fn amx_server() {
    let flags = format!(
        "{BASE} fma avx2 avx512f avx512bw avx512vl avx_vnni avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8"
    );
    let c = CpuInfo::parse(&x86(0, "Intel(R) Xeon(R) Platinum 8480+", 6, 143, &flags));
    assert_eq!(c.model, "Intel(R) Xeon(R) Platinum 8480+");
    assert!(c.missing.is_empty(), "{:?}", c.missing);
    for label in ["AVX-VNNI", "AMX-TILE", "AMX-INT8", "AMX-BF16", "AVX-512 BF16"] {
        assert!(c.has(label), "{label} missing from {:?}", c.isa);
    }
}

#[test]
fn flag_names_match_whole_words_only() {
    // `avx512fp16` must not count as `avx512f`, nor `avx512_vnni_x` as `avx512_vnni`.
    let c = CpuInfo::parse(&x86(0, "Test CPU", 6, 1, "sse2 avx512fp16 avx512_vnni_x"));
    assert!(c.isa.is_empty(), "{:?}", c.isa);
}

#[test]
fn arm_board_without_model_name() {
    let stanza = |i: usize| {
        format!(
            "processor\t: {i}\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics \
             fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm\nCPU implementer\t: 0x41\n\
             CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n"
        )
    };
    let c = CpuInfo::parse(&(stanza(0) + &stanza(1) + &stanza(2)));
    assert_eq!(c.model, "Arm implementer 0x41 part 0xd42");
    assert_eq!(c.family, None);
    assert_eq!(c.logical_cpus, 3);
    assert_eq!(c.isa, ["NEON", "DOTPROD"]);
    assert_eq!(c.missing, ["I8MM", "BF16", "SVE"]);
}

#[test]
fn empty_text_is_unknown() {
    let c = CpuInfo::parse("");
    assert_eq!((c.model.as_str(), c.logical_cpus, c.isa.len()), ("unknown", 0, 0));
}

#[test]
fn detect_reads_this_machine() {
    let c = CpuInfo::detect();
    assert!(c.logical_cpus >= 1, "{c:?}");
    assert!(!c.model.is_empty());
}
