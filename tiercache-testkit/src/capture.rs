//! [`capture`]: a `tracing` layer that keeps the events and spans of one test, installed as the
//! thread's default subscriber. Tests that read it run on a current-thread runtime, so that
//! every task they spawn (a server, a cache's background tasks) logs through it too; tests that
//! run in parallel each see only their own.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One event: its level and fields (`message` included), each as text.
#[derive(Clone, Debug)]
pub struct Logged {
    /// The event's level.
    pub level: Level,
    /// Its fields by name, the message as `message`.
    pub fields: BTreeMap<String, String>,
}

/// One span: its name and its fields as last recorded.
#[derive(Clone, Debug)]
pub struct Spanned {
    /// The span's name.
    pub name: &'static str,
    /// Its fields by name, as last recorded (a field declared empty and never recorded is
    /// absent).
    pub fields: BTreeMap<String, String>,
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
pub struct Captured(Arc<Mutex<Store>>);

impl Captured {
    /// Every event logged so far, in order.
    pub fn events(&self) -> Vec<Logged> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
            .clone()
    }

    /// Every span opened so far, in order.
    pub fn spans(&self) -> Vec<Spanned> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spans
            .clone()
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
        let mut store = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        store.spans.push(Spanned {
            name: attrs.metadata().name(),
            fields,
        });
        let i = store.spans.len() - 1;
        store.open.insert(id.into_u64(), i);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut store = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&i) = store.open.get(&id.into_u64()) {
            values.record(&mut Fields(&mut store.spans[i].fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
            .push(Logged {
                level: *event.metadata().level(),
                fields,
            });
    }
}

/// Captures what this thread logs until the guard drops.
pub fn capture() -> (Captured, DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    (captured, tracing::subscriber::set_default(subscriber))
}
