// Cursor pages as every Mercato list answers them (`{items, next_cursor}`): the first page
// when the inputs change, "Load more" appends the next, and the problem when one is refused.

import { useEffect, useState } from "preact/hooks";
import { type Problem, offline } from "../api/problem";

export interface Page<T> {
  items: T[];
  next_cursor?: string | null;
}

export type FetchPage<T> = (cursor: string | null) => Promise<{ data?: Page<T>; error?: unknown }>;

export function usePages<T>(fetchPage: FetchPage<T>, inputs: unknown[]) {
  const [items, setItems] = useState<T[] | null>(null);
  const [next, setNext] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [problem, setProblem] = useState<Problem | null>(null);

  async function load(cursor: string | null): Promise<T[] | null> {
    setBusy(true);
    setProblem(null);
    try {
      const { data, error } = await fetchPage(cursor);
      if (error || !data) {
        setProblem((error as Problem) ?? offline("no answer"));
        if (!cursor) setItems([]);
        return null;
      }
      setItems((prev) => (cursor && prev ? [...prev, ...data.items] : data.items));
      setNext(data.next_cursor ?? null);
      return data.items;
    } catch (e) {
      setProblem(offline(e));
      return null;
    } finally {
      setBusy(false);
    }
  }

  useEffect(() => {
    setItems(null);
    load(null);
  }, inputs);

  return {
    items,
    next,
    busy,
    problem,
    reload: () => load(null),
    loadMore: () => (next ? load(next) : Promise.resolve(null)),
  };
}
