/** The end customer and properties of the calls made inside `withCustomer(...)`. */
import { AsyncLocalStorage } from "node:async_hooks";

export interface CustomerContext {
  customer: string;
  properties: Record<string, string>;
}

const storage = new AsyncLocalStorage<CustomerContext>();

export const CUSTOMER_HEADER = "x-costr-customer";
export const PROPERTY_HEADER = "x-costr-property-";

/**
 * Runs `fn` with `X-Costr-Customer: id` and an `X-Costr-Property-<name>` header per property on
 * every call made through Costr inside it (awaited calls, callbacks and timers included). An
 * inner `withCustomer` names its own customer and adds to the outer properties. A header the
 * call sets itself wins.
 */
export function withCustomer<T>(id: string, fn: () => T): T;
export function withCustomer<T>(
  id: string,
  properties: Record<string, string> | undefined | null,
  fn: () => T,
): T;
export function withCustomer<T>(
  id: string,
  propertiesOrFn: Record<string, string> | undefined | null | (() => T),
  maybeFn?: () => T,
): T {
  const fn = typeof propertiesOrFn === "function" ? propertiesOrFn : maybeFn;
  if (typeof fn !== "function") throw new TypeError("withCustomer(id, properties, fn): fn is missing");
  const properties = typeof propertiesOrFn === "function" ? undefined : propertiesOrFn;
  const outer = storage.getStore();
  const merged: Record<string, string> = { ...(outer?.properties ?? {}) };
  for (const [name, value] of Object.entries(properties ?? {})) {
    if (value !== undefined && value !== null) merged[name] = String(value);
  }
  return storage.run({ customer: String(id), properties: merged }, fn);
}

export function currentCustomer(): CustomerContext | undefined {
  return storage.getStore();
}

/** Sets the context's attribution headers that the call has not set itself. */
export function applyContextHeaders(headers: Headers): void {
  const context = storage.getStore();
  if (!context) return;
  if (!headers.has(CUSTOMER_HEADER)) headers.set(CUSTOMER_HEADER, context.customer);
  for (const [name, value] of Object.entries(context.properties)) {
    const header = PROPERTY_HEADER + name;
    try {
      if (!headers.has(header)) headers.set(header, value);
    } catch {
      // A name or value no HTTP header can carry is left out, never a failed call.
    }
  }
}
