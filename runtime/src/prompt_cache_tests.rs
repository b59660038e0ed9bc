use super::*;

fn emb(seed: f32) -> Tensor {
    Tensor { shape: vec![1, 3, 4], data: (0..12).map(|i| seed + i as f32 * 0.25).collect() }
}

#[test]
fn a_disk_entry_round_trips_and_a_new_cache_finds_it() {
    let tmp = tempfile::tempdir().unwrap();
    let k = key("model A", 512, "a red fox");
    let mut c = PromptCache::new(Some(tmp.path().to_path_buf()), 1 << 20);
    assert!(c.get(&k).is_none());
    c.put(k, &emb(1.0));
    assert_eq!(c.get(&k).map(|t| t.data), Some(emb(1.0).data));
    assert_eq!((c.counts.memory_hits, c.counts.written), (1, 1));
    let mut fresh = PromptCache::new(Some(tmp.path().to_path_buf()), 1 << 20);
    let t = fresh.get(&k).expect("read back from disk");
    assert_eq!((t.shape, t.data), (emb(1.0).shape, emb(1.0).data));
    assert_eq!(fresh.counts.disk_hits, 1);
    // no temporary file is left behind
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![file_name(&k)]);
}

#[test]
fn the_key_follows_model_settings_and_text() {
    let base = key("model A", 512, "a red fox");
    assert_ne!(base, key("model B", 512, "a red fox"));
    assert_ne!(base, key("model A", 256, "a red fox"));
    assert_ne!(base, key("model A", 512, "a red fox "));
    assert_eq!(base, key("model A", 512, "a red fox"));
}

#[test]
fn damaged_files_are_refused_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let k = key("m", 8, "p");
    let path = tmp.path().join(file_name(&k));
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let damages: Vec<Damage> = vec![
        Box::new(|b| b.truncate(b.len() - 5)),                        // truncated
        Box::new(|b| b.push(0)),                                      // padded
        Box::new(|b| b[HEADER + 3] ^= 1),                             // data bit flipped: checksum
        Box::new(|b| b[20] ^= 1),                                     // another key
        Box::new(|b| b.truncate(10)),                                 // header cut
        Box::new(|b| b[44..52].copy_from_slice(&2u64.to_le_bytes())), // shape disagrees with size
    ];
    for (i, damage) in damages.iter().enumerate() {
        PromptCache::new(Some(tmp.path().to_path_buf()), 0).put(k, &emb(2.0));
        let mut bytes = std::fs::read(&path).unwrap();
        damage(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let mut c = PromptCache::new(Some(tmp.path().to_path_buf()), 0);
        assert!(c.get(&k).is_none(), "damage {i} was trusted");
        assert_eq!(c.counts.rejected, 1, "damage {i}");
        assert!(!path.exists(), "damage {i}: the bad file stays");
    }
}

#[test]
fn memory_stays_within_its_budget() {
    let mut c = PromptCache::new(None, 2 * 12 * 4);
    let keys: Vec<[u8; 32]> = (0..3).map(|i| key("m", 8, &i.to_string())).collect();
    for (i, k) in keys.iter().enumerate() {
        c.put(*k, &emb(i as f32));
    }
    assert!(c.get(&keys[0]).is_none(), "the oldest entry should have been dropped");
    assert!(c.get(&keys[1]).is_some() && c.get(&keys[2]).is_some());
    assert!(c.used <= c.budget);
}
