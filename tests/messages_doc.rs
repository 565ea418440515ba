//! Issue 12: MESSAGES.md is the contract, so it must be true. Every
//! example decodes with the code's own decoder, every field marked
//! *required* is one (the example without it is refused) and every other
//! field is not (the example without it still decodes), and every queue
//! and exchange the page names exists.

use broker::message::decode;
use broker::Names;
use model::{Control, Event, Job, JobResult, Message, RunnerInfo};
use serde_json::Value;

const PAGE: &str = include_str!("../MESSAGES.md");
const CAP: usize = 1 << 20;

/// One `## ` section of the page: its title, the rows of its first table
/// (field, required?) and its first JSON example.
struct Section {
    title: String,
    fields: Vec<(String, bool)>,
    example: Value,
}

fn sections() -> Vec<Section> {
    PAGE.split("\n## ")
        .skip(1)
        .filter_map(|text| {
            let title = text.lines().next()?.trim().to_string();
            let fields = text
                .lines()
                .filter(|line| line.starts_with("| `"))
                .filter_map(|line| {
                    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                    let name = cells.get(1)?.trim_matches('`').to_string();
                    let required = match *cells.get(3)? {
                        "required" => true,
                        "optional" => false,
                        _ => return None,
                    };
                    Some((name, required))
                })
                .collect();
            let json = text.split("```json\n").nth(1)?.split("\n```").next()?;
            let example = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("section {title}: the example is not JSON: {e}"));
            Some(Section {
                title,
                fields,
                example,
            })
        })
        .collect()
}

/// Decodes `value` as the message a section documents.
fn decodes(title: &str, value: &Value) -> Result<(), String> {
    fn with<T: Message>(value: &Value) -> Result<(), String> {
        decode::<T>(&serde_json::to_vec(value).expect("json"), CAP)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    match title {
        "Job" => with::<Job>(value),
        "Event: started" | "Event: heartbeat" => with::<Event>(value),
        "Result" => with::<JobResult>(value),
        "Control: cancel" => with::<Control>(value),
        "Runner" => serde_json::from_value::<RunnerInfo>(value.clone())
            .map(drop)
            .map_err(|e| e.to_string()),
        other => panic!("MESSAGES.md has a section {other:?} that this test does not know"),
    }
}

#[test]
fn every_example_decodes_and_every_required_field_is_required() {
    let sections: Vec<Section> = sections()
        .into_iter()
        .filter(|s| !s.fields.is_empty())
        .collect();
    let titles: Vec<&str> = sections.iter().map(|s| s.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "Job",
            "Runner",
            "Event: started",
            "Event: heartbeat",
            "Result",
            "Control: cancel"
        ],
        "every message has its section"
    );
    for section in &sections {
        let title = &section.title;
        if let Err(e) = decodes(title, &section.example) {
            panic!("{title}: the example is refused: {e}");
        }
        for (field, required) in &section.fields {
            let mut without = section.example.clone();
            without
                .as_object_mut()
                .expect("examples are objects")
                .remove(field);
            match (decodes(title, &without), required) {
                (Ok(()), true) => panic!("{title}: `{field}` is marked required but is not"),
                (Err(e), false) => {
                    panic!("{title}: `{field}` is marked optional but is required: {e}")
                }
                _ => {}
            }
        }
        // Every field of the example is documented.
        for key in section.example.as_object().expect("object").keys() {
            assert!(
                section.fields.iter().any(|(field, _)| field == key),
                "{title}: the example's `{key}` is not in the table"
            );
        }
    }
}

#[test]
fn the_id_rule_example_is_the_id_the_code_makes() {
    let job = &sections()
        .into_iter()
        .find(|s| s.title == "Job")
        .expect("a Job section")
        .example;
    let field = |name: &str| job[name].as_str().expect("a string").to_string();
    let made =
        Job::try_new(&field("repo"), &field("branch"), &field("commit")).expect("a valid job");
    assert_eq!(made.id.as_str(), field("id"));
}

#[test]
fn every_queue_and_exchange_the_page_names_exists() {
    let names = Names::new("N");
    let known: Vec<String> = names
        .all_queues()
        .into_iter()
        .chain(names.all_exchanges())
        .collect();
    for mention in PAGE.split('`').filter(|s| s.starts_with("N.")) {
        // A pipeline queue's work queue, declared on first use.
        let named = mention
            .strip_prefix(&names.named_work_queue_prefix())
            .is_some_and(|queue| queue == "<queue>" || queue.parse::<model::QueueName>().is_ok());
        assert!(
            named || known.iter().any(|k| k == mention),
            "MESSAGES.md names `{mention}`, which Warren does not declare"
        );
    }
}
