//! CQL2 compiled against queryables: what is accepted, what is refused
//! (naming it), how features are judged in memory, and that nothing a
//! client writes ever becomes SQL text.

use kfm_query::filter::{Context, FilterCrs, Subject};
use kfm_query::{Filter, FilterLang, Observer, Queryables, Sql};
use proptest::prelude::*;
use serde_json::{Value, json};

fn queryables() -> Queryables {
    let mut o = Observer::new();
    for p in [
        json!({"name": "Abilene", "pop": 6460, "area": 10.5, "seat": true, "recorded": "1950-05-01", "tags": ["a"]}),
        json!({"name": "Hays", "pop": 21000, "area": 6.1, "seat": false, "recorded": "1999-12-31T12:00:00Z"}),
    ] {
        o.observe(p.as_object(), Some("Point"));
    }
    o.finish()
}

fn ctx(q: &Queryables) -> Context<'_> {
    Context {
        queryables: q,
        temporal: Some("recorded"),
        crs: FilterCrs::Crs84,
    }
}

fn text(f: &str) -> Result<Filter, String> {
    let q = queryables();
    Filter::parse(f, FilterLang::Text, &ctx(&q)).map_err(|e| e.to_string())
}

fn eval(f: &Filter, props: Value, xy: Option<(f64, f64)>) -> Option<bool> {
    let g = xy.map(|(x, y)| geo::Geometry::Point(geo::Point::new(x, y)));
    let bbox = xy.map(|(x, y)| [x, y, x, y]);
    let time = props["recorded"]
        .as_str()
        .and_then(kfm_query::time::instant);
    let terms = kfm_query::terms::terms(props.as_object());
    f.eval(&Subject {
        props: props.as_object(),
        geometry: g.as_ref(),
        bbox: bbox.as_ref(),
        time,
        terms: &terms,
    })
}

#[test]
fn comparisons_follow_sqls_three_valued_logic() {
    let abilene = json!({"name": "Abilene", "pop": 6460, "recorded": "1950-05-01"});
    let nameless = json!({"pop": 1});
    let f = text("name = 'Abilene' AND pop > 6000").unwrap();
    assert_eq!(eval(&f, abilene.clone(), None), Some(true));
    // A missing property is unknown, and NOT unknown is unknown.
    let g = text("NOT (name = 'Abilene')").unwrap();
    assert_eq!(eval(&g, nameless.clone(), None), None);
    assert_eq!(
        eval(&text("name IS NULL").unwrap(), nameless.clone(), None),
        Some(true)
    );
    assert_eq!(
        eval(&text("name IS NULL OR pop = 1").unwrap(), nameless, None),
        Some(true)
    );
    assert_eq!(
        eval(
            &text("CASEI(name) = CASEI('ABILENE')").unwrap(),
            abilene.clone(),
            None
        ),
        Some(true)
    );
    assert_eq!(
        eval(&text("name LIKE 'Ab_l%'").unwrap(), abilene.clone(), None),
        Some(true)
    );
    assert_eq!(
        eval(
            &text("pop BETWEEN 6000 AND 7000").unwrap(),
            abilene.clone(),
            None
        ),
        Some(true)
    );
    assert_eq!(
        eval(
            &text("name IN ('Hays', 'Abilene')").unwrap(),
            abilene.clone(),
            None
        ),
        Some(true)
    );
    assert_eq!(
        eval(
            &text("T_BEFORE(recorded, DATE('1951-01-01'))").unwrap(),
            abilene.clone(),
            None
        ),
        Some(true)
    );
    assert_eq!(
        eval(
            &text("S_INTERSECTS(geometry, BBOX(-98, 38, -97, 39))").unwrap(),
            abilene.clone(),
            Some((-97.2, 38.9))
        ),
        Some(true)
    );
    assert_eq!(
        eval(
            &text("S_WITHIN(geometry, POLYGON((-98 38, -97 38, -97 39, -98 39, -98 38)))").unwrap(),
            abilene,
            Some((-90.0, 38.9))
        ),
        Some(false)
    );
}

#[test]
fn what_does_not_fit_is_refused_by_name() {
    for (f, names) in [
        ("nope = 1", "unknown property \"nope\""),
        ("pop = 'x'", "numbers"),
        ("name > 3", "strings"),
        ("tags = 'a'", "several kinds"),
        ("pg_sleep(1) = 1", "unknown function \"pg_sleep\""),
        ("name = 'a'; DROP TABLE t", "not valid CQL2"),
        ("pop + 1 > 3", "arithmetic"),
        ("T_MEETS(recorded, DATE('2000-01-01'))", "T_MEETS"),
        (
            "T_AFTER(name, DATE('2000-01-01'))",
            "not this collection's time property",
        ),
        ("S_INTERSECTS(name, POINT(1 2))", "feature geometry"),
        ("name = NULL", "IS NULL"),
        ("name LIKE 'a\\'", "escape"),
        ("name", "alone is not a condition"),
    ] {
        let e = text(f).err().unwrap_or_else(|| panic!("{f} was accepted"));
        assert!(e.contains(names), "{f}: {e}");
    }
    let deep = format!("{}name = 'a'{}", "(".repeat(40), ")".repeat(40));
    assert!(text(&deep).unwrap_err().contains("nests deeper"));
    let q = queryables();
    let j = Filter::parse(
        r#"{"op":"=","args":[{"property":"secret"},"x"]}"#,
        FilterLang::Json,
        &ctx(&q),
    );
    assert!(
        j.unwrap_err()
            .to_string()
            .contains("unknown property \"secret\"")
    );
    // What a policy redacts is not queryable.
    let redacted = q.without(&["name".to_owned()]);
    let e = Filter::parse("name = 'x'", FilterLang::Text, &ctx(&redacted)).unwrap_err();
    assert!(e.to_string().contains("unknown property"));
}

#[test]
fn epsg_4326_geometries_are_latitude_first() {
    let q = queryables();
    let c = Context {
        queryables: &q,
        temporal: None,
        crs: FilterCrs::Epsg4326,
    };
    let f = Filter::parse(
        "S_INTERSECTS(geometry, POINT(38.9 -97.2))",
        FilterLang::Text,
        &c,
    )
    .unwrap();
    assert_eq!(eval(&f, json!({}), Some((-97.2, 38.9))), Some(true));
}

proptest! {
    /// Whatever a client writes as a property name, a value, a pattern or
    /// a search word, the SQL text is built from fixed pieces only.
    #[test]
    fn client_text_never_becomes_sql_text(name in "zq[a-z'\";\\-\\\\ /*()]{1,12}[';\"]", value in "zv\\PC{1,16}") {
        let mut o = Observer::new();
        o.observe(json!({ name.clone(): "x", "n": 1 }).as_object(), Some("Point"));
        let q = o.finish();
        let c = Context { queryables: &q, temporal: None, crs: FilterCrs::Crs84 };
        let quoted_name = format!("\"{}\"", name.replace('"', "\"\""));
        let quoted_value = format!("'{}'", value.replace('\'', "''"));
        let filters = [
            format!("{quoted_name} = {quoted_value}"),
            format!(
                "{quoted_name} LIKE '%{}'",
                value.replace('\'', "''").replace('\\', "\\\\")
            ),
            format!("{quoted_name} IS NULL AND CASEI({quoted_name}) <> CASEI({quoted_value})"),
        ];
        let mut parsed_one = false;
        for f in filters {
            let parsed = Filter::parse(&f, FilterLang::Text, &c);
            let Ok(filter) = parsed else { continue };
            parsed_one = true;
            let mut sql = Sql::new();
            filter.to_sql(&mut sql);
            prop_assert!(!sql.text.contains(&name), "{} in {}", name, sql.text);
            prop_assert!(!sql.text.contains("zv"), "{} in {}", value, sql.text);
            let search = kfm_query::Search::parse(&value);
            if let Ok(s) = search {
                let t = Filter::Terms { search: s, allowed: vec![name.clone()] };
                let mut sql = Sql::new();
                t.to_sql(&mut sql);
                prop_assert!(!sql.text.contains(&name));
            }
        }
        // Not vacuous: the plain comparison always reads.
        prop_assert!(parsed_one, "none of the filters for {:?} parsed", name);
    }
}
