// Types of the React bindings (`@troupe/web/react`).

import type * as Y from 'yjs'
import type { Awareness } from 'y-protocols/awareness'
import type { WebsocketProvider } from 'y-websocket'
import type { EditorView } from 'prosemirror-view'
import type { Schema } from 'prosemirror-model'
import type { ReactElement } from 'react'
import type { SceneSession, ConnectSceneOptions, SessionStatus, NoticeEvent } from '../src/index.js'

/** What `useYjsCollaboration` returns; re-rendered as the session changes. */
export interface Collaboration {
  session: SceneSession | null
  doc: Y.Doc | null
  provider: WebsocketProvider | null
  awareness: Awareness | null
  status: SessionStatus
  isConnected: boolean
  hasUnsyncedChanges: boolean
  mode: 'live' | 'autosave'
  readOnly: boolean
  error: { code: number, reason: string, error?: unknown } | null
}

export interface UseYjsCollaborationOptions {
  sceneId: string
  /** The JWT the app's backend minted for this user. */
  authToken: string | null
  /** The router's base URL (default: the page's origin). */
  router?: string
  /** A fresh token when the node refuses one (4401). */
  getToken?: () => string | Promise<string>
  /** Published as presence (`awareness.user`). */
  user?: { name: string, color: string }
  onSyncStatusChange?: (status: SessionStatus) => void
  onNotice?: (notice: NoticeEvent) => void
  /** More `connectScene` options (timeouts, fallback, autosave). */
  options?: Partial<ConnectSceneOptions>
}

export function useYjsCollaboration (opts: UseYjsCollaborationOptions): Collaboration

export function CollaborativeScreenplayEditor (props: {
  collaboration: Collaboration
  onView?: (view: EditorView | null) => void
  onBlockType?: (blockType: string) => void
  id?: string
  className?: string
}): ReactElement

export function PresenceAvatars (props: { awareness: Awareness | null, id?: string }): ReactElement
export function TypingIndicator (props: { awareness: Awareness | null, id?: string }): ReactElement
export function CollaborationStatusBar (props: { collaboration: Pick<Collaboration, 'status' | 'hasUnsyncedChanges' | 'readOnly'>, error?: string | null }): ReactElement
export function UserCursor (props: { user: { name: string, color: string } }): ReactElement

export function describeStatus (state: Pick<Collaboration, 'status' | 'hasUnsyncedChanges' | 'readOnly'>, error?: string | null): { colour: 'green' | 'yellow' | 'red', text: string }
export function cursorBuilder (user: { name?: string, color?: string }): HTMLElement
export function initials (name: string): string

export const TYPING_MS: number
export const schema: Schema
export const BLOCK_TYPES: readonly string[]
export const BLOCK_LABELS: Record<string, string>
export function setBlock (name: string): (state: any, dispatch?: (tr: any) => void) => boolean
