// Alarms on the object's side: an `objectAlarm` event runs the object's alarm() once its
// input gate lets it in, and tells the scheduler (alarms.rs) how it went: done, retry
// (alarm() threw), or stale (the object's own record differs from what fired).

import { core } from "ext:core/mod.js";
import { config, console, runAs } from "ext:dorun/00_runtime.js";

const {
  op_dorun_alarm_done,
  op_dorun_alarm_retry,
  op_dorun_alarm_stale,
  op_dorun_alarm_stale_none,
} = core.ops;

/** Runs a due alarm and tells the scheduler what comes next. */
export async function runAlarm(object, incoming) {
  const scheduled = incoming.scheduled;
  const retryCount = incoming.retries;
  const storage = object.storage;
  const stored = storage.storedAlarm();
  if (stored !== scheduled) {
    // The scheduler's record is stale (from the index after a crash): go by the object's.
    if (stored === null) op_dorun_alarm_stale_none(incoming.id);
    else op_dorun_alarm_stale(incoming.id, stored);
    return;
  }
  const instance = object.instance;
  if (typeof instance.alarm !== "function") {
    console.error(
      "Attempted to run a scheduled alarm without a handler, did you remember to export an alarm() function?",
    );
    await storage.deleteAlarm();
    await storage.outputGate();
    op_dorun_alarm_done(incoming.id);
    return;
  }
  let failed = null;
  object.runningAlarm = scheduled;
  try {
    await runAs(
      object,
      () => instance.alarm({ scheduledTime: scheduled, retryCount, isRetry: retryCount > 0 }),
    );
  } catch (error) {
    failed = error;
    console.error(`alarm() of Durable Object ${object.className} ${object.hex} threw:`, error);
  } finally {
    object.runningAlarm = null;
  }
  if (object.broken !== null) {
    if (object.noAlarmRetry) op_dorun_alarm_done(incoming.id);
    else op_dorun_alarm_retry(incoming.id);
    return;
  }
  const after = storage.storedAlarm();
  let retry = false;
  if (after === scheduled) {
    if (failed === null || object.noAlarmRetry || retryCount >= config.alarmMaxRetries) {
      if (failed !== null) {
        console.error(
          `alarm() of Durable Object ${object.className} ${object.hex} gave up after ${retryCount} retries`,
        );
      }
      // Done with this alarm (a new one set by the handler would differ from `scheduled`).
      await storage.deleteAlarm();
    } else {
      retry = true;
    }
  }
  await storage.outputGate();
  if (retry) op_dorun_alarm_retry(incoming.id);
  else op_dorun_alarm_done(incoming.id);
}
