use phi_guard::decision::{ApplyCtx, CompartmentCheck, Expected, ResponseCheck, ResponsePlan};
use std::sync::Arc;
use std::time::Instant;

#[test]
#[ignore]
fn timing() {
    let policy = phi_guard::policy::compile(&std::fs::read("policies/smart-patient-app.json").unwrap()).unwrap();
    let profile = policy
        .routes
        .iter()
        .filter_map(|r| r.minimize.as_ref())
        .flat_map(|s| s.profiles.iter())
        .find(|p| p.name == "patient-app")
        .unwrap()
        .clone();
    for name in ["observation-200k", "observation-16k", "patient"] {
        let body = std::fs::read(format!("/tmp/bodies/{name}.json")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let expect = Expected::Resource {
            resource_type: if name == "patient" { "Patient" } else { "Observation" },
            id: v["id"].as_str().unwrap().to_owned(),
        };
        let check = CompartmentCheck { patient: "d78af07c-9cb9-4f31-9b11-c45a28f2eec8".into(), shared: vec!["Medication"].into(), expect };
        let plan = ResponsePlan {
            checks: vec![ResponseCheck::Compartment(check)],
            minimize: Some(profile.clone()),
            max_body_bytes: 1 << 24,
            restrict: None,
        };
        let ctx = ApplyCtx::default();
        let n = 50;
        let a = plan.release(&body, &ctx);
        let b = plan.release_tree(&body, &ctx);
        assert_eq!(a.outcome.as_ref().map(|x| x.withheld.clone()), b.outcome.as_ref().map(|x| x.withheld.clone()));
        println!("{name}: outcome ok={} withheld={:?}", a.outcome.is_ok(), a.outcome.as_ref().map(|x| x.count));
        for (label, f) in [("tree", 0), ("stream", 1), ("validate", 2), ("check", 3), ("minimize", 4)] {
            let t = Instant::now();
            for _ in 0..n {
                match f {
                    0 => {
                        std::hint::black_box(plan.release_tree(&body, &ctx));
                    }
                    1 => {
                        std::hint::black_box(plan.release(&body, &ctx));
                    }
                    2 => {
                        std::hint::black_box(phi_guard::json::validate(&body)).unwrap();
                    }
                    3 => {
                        if let ResponseCheck::Compartment(c) = &plan.checks[0] {
                            std::hint::black_box(c.scan(&body)).unwrap();
                        }
                    }
                    _ => {
                        std::hint::black_box(phi_guard::minimize::release_text(&profile, &body, &ctx, &Default::default())).unwrap();
                    }
                }
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
            println!("  {label:9} {us:9.1} us  {:.2} us/KiB", us / (body.len() as f64 / 1024.0));
        }
    }
    let _ = Arc::new(0);
}
