//! Collecting independent problems so that one compile reports all of them.

/// Problems found so far; reported together through `syn::Error::combine`.
#[derive(Default)]
pub(crate) struct Errors {
    combined: Option<syn::Error>,
}

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// Keeps the error of `result`, if any, and returns its value.
    pub(crate) fn keep<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.push(error);
                None
            }
        }
    }

    /// Like `keep`, but an error whose message was reported already is dropped: checks of the
    /// function itself, repeated for each of several stacked attributes, report it once.
    pub(crate) fn keep_once<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                let message = error.to_string();
                let reported = self
                    .combined
                    .iter()
                    .flat_map(|combined| combined.clone().into_iter())
                    .any(|earlier| earlier.to_string() == message);
                if !reported {
                    self.push(error);
                }
                None
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.combined.is_none()
    }

    /// `value` if nothing went wrong, else every problem at once.
    pub(crate) fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.combined {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }
}
