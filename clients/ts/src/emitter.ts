/** A small typed event emitter (no Node `events`, so it runs in browsers). */
export class Emitter<Events extends Record<string, unknown>> {
  private listeners: { [K in keyof Events]?: Array<(ev: Events[K]) => void> } = {};

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, fn: (ev: Events[K]) => void): () => void {
    (this.listeners[event] ??= []).push(fn);
    return () => this.off(event, fn);
  }

  /** Adds a listener that is removed after its first call. */
  once<K extends keyof Events>(event: K, fn: (ev: Events[K]) => void): () => void {
    const off = this.on(event, (ev) => {
      off();
      fn(ev);
    });
    return off;
  }

  off<K extends keyof Events>(event: K, fn: (ev: Events[K]) => void): void {
    const list = this.listeners[event];
    if (!list) return;
    const i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
  }

  /** Calls every listener; returns the errors listeners threw (never throws). */
  protected emitSafe<K extends keyof Events>(event: K, ev: Events[K]): unknown[] {
    const list = this.listeners[event];
    if (!list || list.length === 0) return [];
    const errors: unknown[] = [];
    for (const fn of [...list]) {
      try {
        fn(ev);
      } catch (e) {
        errors.push(e);
      }
    }
    return errors;
  }

  protected listenerCount<K extends keyof Events>(event: K): number {
    return this.listeners[event]?.length ?? 0;
  }
}
