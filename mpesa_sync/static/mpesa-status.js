// A bar's live M-Pesa status for a Supabase app, over Broadcast from the
// database (`mpesa-sync realtime enable`). An ES module with no dependency
// and no build step: it takes the app's own supabase-js client.
//
//   import { watchMpesaStatus } from "./mpesa-status.js";
//   const stop = watchMpesaStatus(supabase, barId, (state) => render(state));
//   // later: stop();
//
// state is null (no such bar, or one the caller may not read) or
//   { bar_id, mpesa_enabled, card_enabled, cash_enabled, generation, event_id }
//
// Broadcast has no delivery guarantee and no replay, so the state comes from
// the state call (public.mpesa_status) on every SUBSCRIBED, the first and each
// one after a reconnect; a broadcast is applied only when its event id is
// newer than the state held, and a broadcast of another event log (another
// generation: a new install, a restore) makes it read the state again.

export function watchMpesaStatus(supabase, barIdGiven, onChange, options = {}) {
  const barId = String(barIdGiven).toLowerCase(); // as the database writes a uuid
  const { private: isPrivate = true, onError = (error) => console.error(error) } = options;
  let state; // undefined until the first read: nothing to compare a broadcast with
  let pending = []; // broadcasts that arrived before that read answered
  let reads = 0;
  let stopped = false;

  const emit = (next) => {
    state = next;
    onChange(next === null ? null : { ...next });
  };

  const apply = (message) => {
    if (state === null) return; // the bar is unknown to us: only a read can change that
    if (message.generation !== state.generation) {
      read(); // another log: its ids do not compare with ours
      return;
    }
    if (!(message.event_id > state.event_id)) return; // stale or duplicate
    emit({ ...state, mpesa_enabled: message.mpesa_enabled, event_id: message.event_id });
  };

  async function read() {
    const mine = ++reads;
    const { data, error } = await supabase.rpc("mpesa_status", { p_bar_id: barId });
    if (stopped || mine !== reads) return; // a newer read is on its way
    if (error) {
      onError(error);
      return;
    }
    const held = state;
    // A read reflects every event up to its event_id; a broadcast applied
    // while it was on its way may be newer still (same log, greater id).
    if (
      data === null ||
      held === undefined ||
      held === null ||
      data.generation !== held.generation ||
      data.event_id >= held.event_id
    ) {
      emit(data);
    }
    const early = pending;
    pending = [];
    early.forEach(apply);
  }

  const channel = supabase
    .channel(`mpesa_status:${barId}`, { config: { private: isPrivate } })
    .on("broadcast", { event: "status" }, ({ payload }) => {
      if (stopped || !payload || payload.bar_id !== barId) return;
      if (state === undefined) pending.push(payload);
      else apply(payload);
    })
    .subscribe((status, err) => {
      if (stopped) return;
      if (status === "SUBSCRIBED") read();
      else if (err) onError(err);
    });

  return () => {
    stopped = true;
    supabase.removeChannel(channel);
  };
}
