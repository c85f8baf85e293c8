//! A `tracing` layer that keeps the events and spans of one test, installed as the thread's
//! default subscriber: tests that read it run on a current-thread runtime, so every task they
//! spawn (the server, the cache's and the evaluator's tasks) logs through it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One event: its level and fields (`message` included).
#[derive(Clone, Debug)]
pub(crate) struct Logged {
    pub(crate) level: Level,
    pub(crate) fields: BTreeMap<String, String>,
}

/// One span: its name and its fields as last recorded.
#[derive(Clone, Debug)]
pub(crate) struct Spanned {
    pub(crate) name: &'static str,
    pub(crate) fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Store {
    events: Vec<Logged>,
    spans: Vec<Spanned>,
    /// Span id to its index in `spans` (ids are reused after a span closes).
    open: HashMap<u64, usize>,
}

/// What the thread logged since [`capture`].
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Store>>);

impl Captured {
    pub(crate) fn events(&self) -> Vec<Logged> {
        self.0.lock().unwrap().events.clone()
    }

    pub(crate) fn spans(&self) -> Vec<Spanned> {
        self.0.lock().unwrap().spans.clone()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut store = self.0.lock().unwrap();
        store.spans.push(Spanned {
            name: attrs.metadata().name(),
            fields,
        });
        let i = store.spans.len() - 1;
        store.open.insert(id.into_u64(), i);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut store = self.0.lock().unwrap();
        if let Some(&i) = store.open.get(&id.into_u64()) {
            values.record(&mut Fields(&mut store.spans[i].fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().events.push(Logged {
            level: *event.metadata().level(),
            fields,
        });
    }
}

/// Captures what this thread logs until the guard drops.
pub(crate) fn capture() -> (Captured, DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    (captured, tracing::subscriber::set_default(subscriber))
}
