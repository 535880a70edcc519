"""imsaka.ue"""
