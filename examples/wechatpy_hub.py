import time

from wechatpy import WeChatClient

from pighand_token.client import TokenClient


class HubWeChatClient(WeChatClient):
    """wechatpy's client with its access token from pighand-token.

    wechatpy calls fetch_access_token() when it holds no token or its
    expires_at is 60 s away, and (auto_retry) after an API answered
    40001/40014/42001, then repeats that call with the token in its session.
    """

    def __init__(self, appid: str, hub: TokenClient, **kwargs):
        super().__init__(appid, None, **kwargs)
        self.hub = hub

    def fetch_access_token(self):
        held = self.session.get(self.access_token_key)
        if held and self.expires_at and self.expires_at - time.time() > 60:
            # Not near its end, so the platform rejected it: report it, and
            # every caller that saw the same rejection gets one replacement.
            answer = self.hub.refresh_expiring("wechat", self.appid, stale_token=held)
        else:
            answer = self.hub.get_expiring("wechat", self.appid)
        # wechatpy stops using a token 60 s before expires_at: line that up
        # with the moment the hub stops serving it.
        life = (answer.expires_in or 0) + 60
        self.session.set(self.access_token_key, answer.value, life)
        self.expires_at = time.time() + life
        return {"access_token": answer.value, "expires_in": answer.expires_in}
