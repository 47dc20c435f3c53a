//! The io side of the dispatcher's [`Sink`]: what plugins' threads and the
//! task-file thread hand to the loop crosses in one mpsc channel, and the
//! loop's `mio::Waker` wakes it (not needed from the loop thread itself:
//! the core takes that mail right after the dispatch). Task results are
//! stored by the task-file thread, in order with the markers, before they
//! reach the loop.

use std::sync::{mpsc, Arc, Mutex};
use std::thread::ThreadId;

use mio::Waker;

use crate::core::dispatch::{Finished, Mail, Sink};
use crate::core::tasks::TaskFileOp;
use crate::io::taskfiles::{Answer, Job, TaskFiles};

impl crate::core::dispatch::Wake for Waker {
    fn wake(&self) -> std::io::Result<()> {
        Waker::wake(self)
    }
}

/// The channel and waker between the loop and every other thread.
pub struct Mailbox {
    tx: mpsc::Sender<Mail>,
    rx: Mutex<mpsc::Receiver<Mail>>,
    waker: Arc<Waker>,
    loop_thread: ThreadId,
    files: Mutex<Option<TaskFiles>>,
}

/// Posts `mail` and wakes the loop unless called from it.
fn post(tx: &mpsc::Sender<Mail>, waker: &Waker, loop_thread: ThreadId, mail: Mail) {
    if tx.send(mail).is_err() {
        log::debug!("mail for a loop that is gone dropped");
        return;
    }
    if std::thread::current().id() != loop_thread {
        if let Err(e) = waker.wake() {
            log::error!("cannot wake the loop: {e}");
        }
    }
}

impl Mailbox {
    /// A mailbox for the loop running on the current thread.
    pub fn new(waker: Arc<Waker>) -> Arc<Mailbox> {
        let (tx, rx) = mpsc::channel();
        Arc::new(Mailbox {
            tx,
            rx: Mutex::new(rx),
            waker,
            loop_thread: std::thread::current().id(),
            files: Mutex::new(None),
        })
    }

    /// Starts the task-file thread for the outbox `dir`; its answers come
    /// back through this mailbox.
    pub fn start_files(
        self: &Arc<Self>,
        dir: std::path::PathBuf,
        max_frame: usize,
    ) -> std::io::Result<()> {
        let (tx, waker, loop_thread) = (self.tx.clone(), Arc::clone(&self.waker), self.loop_thread);
        let files = TaskFiles::spawn(dir, max_frame, move |a| {
            let mail = match a {
                Answer::Batch(b) => Mail::Batch(b),
                Answer::Read { ctx, frame } => Mail::Read { ctx, frame },
            };
            post(&tx, &waker, loop_thread, mail);
        })?;
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = Some(files);
        Ok(())
    }

    fn send_job(&self, job: Job) {
        match self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(files) => files.send(job),
            None => log::error!("no task-file thread; task file work dropped"),
        }
    }
}

impl Sink for Mailbox {
    fn finished(&self, f: Finished) {
        post(&self.tx, &self.waker, self.loop_thread, Mail::Finished(f));
    }

    fn task_finished(&self, f: Finished) {
        let (tx, waker, loop_thread) = (self.tx.clone(), Arc::clone(&self.waker), self.loop_thread);
        self.send_job(Job::Store(
            f,
            Box::new(move |f| post(&tx, &waker, loop_thread, Mail::Finished(f))),
        ));
    }

    fn persist(&self, op: TaskFileOp) {
        self.send_job(Job::Op(op));
    }

    fn unix_ms(&self) -> u128 {
        crate::io::taskfiles::unix_ms()
    }

    fn try_next(&self) -> Option<Mail> {
        self.rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_recv()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::dispatch::TaskEnd;
    use crate::core::tasks::{done_frame, new_task_id};
    use std::time::Duration;

    /// Waits on the poll for the waker, then takes the next mail.
    fn next(poll: &mut mio::Poll, mailbox: &Mailbox) -> Mail {
        let mut events = mio::Events::with_capacity(4);
        for _ in 0..100 {
            if let Some(m) = mailbox.try_next() {
                return m;
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
        }
        panic!("no mail came");
    }

    #[test]
    fn results_are_stored_before_they_reach_the_loop_and_batches_come_back_by_mail() {
        let dir = tempfile::tempdir().unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(1)).unwrap());
        let mailbox = Mailbox::new(waker);
        mailbox.start_files(dir.path().to_owned(), 1 << 20).unwrap();
        let id = new_task_id();
        mailbox.persist(TaskFileOp::Marker {
            id: id.clone(),
            text: "{}".into(),
        });
        let frame = done_frame(&id, 2, "", Some("{\"stdout\":\"x\"}".into()), 1 << 20);
        let theirs = Arc::clone(&mailbox);
        let (task, f) = (id.clone(), frame.clone());
        // A plugin's thread completes the task.
        std::thread::spawn(move || {
            theirs.task_finished(Finished::of_task(
                1,
                f,
                TaskEnd {
                    id: task,
                    retcode: 2,
                    stored: false,
                    schedule: None,
                },
            ))
        })
        .join()
        .unwrap();
        let Mail::Finished(done) = next(&mut poll, &mailbox) else {
            panic!("a finished task")
        };
        assert!(done.task.unwrap().stored);
        let on_disk = std::fs::read(dir.path().join(format!("{id}.done"))).unwrap();
        assert_eq!(on_disk, frame, "stored before it reached the loop");
        assert!(
            !dir.path().join(format!("{id}.running")).exists(),
            "the marker, written first, is gone with the result"
        );
        mailbox.persist(TaskFileOp::Load {
            generation: 4,
            ids: vec![id.clone(), "0bad-1".into()],
        });
        let Mail::Batch(batch) = next(&mut poll, &mailbox) else {
            panic!("a batch")
        };
        assert_eq!(batch.generation, 4);
        assert_eq!(batch.frames.len(), 2);
        assert_eq!(batch.frames[0], (id, Some(frame)));
        assert_eq!(batch.frames[1].1, None, "a result that cannot be read");
    }
}
